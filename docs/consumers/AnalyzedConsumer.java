// A downstream consumer of images.analyzed in Java, without lensflow: kafka-clients plus Apache Avro.
//
//   java -cp "<kafka-clients and avro jars>/*" AnalyzedConsumer.java BOOTSTRAP TOPIC SCHEMAS_DIR [MAX]
//
// Values are Avro single-object encoded (C3 01 + CRC-64-AVRO fingerprint + body). BinaryMessageDecoder
// finds the writer schema by that fingerprint among every released version of ImageAnalyzed
// (schemas/history/ImageAnalyzed/*.avsc, self-contained) and resolves it to the newest one, so records
// of any version in the topic are read. Repeats a crash can cause are dropped by
// (image_id, run_id, analysis_version). Prints one line per event: image_id, run_id, status, caption.
// Stops after MAX events, or after 15 s without any.
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.stream.Stream;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.SchemaStore;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class AnalyzedConsumer {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1];
        Path history = Path.of(args[2], "history", "ImageAnalyzed");
        int max = args.length > 3 ? Integer.parseInt(args[3]) : Integer.MAX_VALUE;

        List<Path> files = new ArrayList<>();
        try (Stream<Path> s = Files.list(history)) {
            s.filter(p -> p.toString().endsWith(".avsc")).forEach(files::add);
        }
        files.sort((a, b) -> Integer.compare(version(a), version(b)));
        SchemaStore.Cache store = new SchemaStore.Cache();
        Schema newest = null;
        for (Path f : files) {
            newest = new Schema.Parser().parse(Files.readString(f));
            store.addSchema(newest);
        }
        BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), newest, store);

        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("group.id", "analyzed-consumer-" + UUID.randomUUID());
        props.put("auto.offset.reset", "earliest");
        props.put("key.deserializer", ByteArrayDeserializer.class.getName());
        props.put("value.deserializer", ByteArrayDeserializer.class.getName());
        Set<String> seen = new HashSet<>();
        int events = 0;
        long idleSince = System.currentTimeMillis();
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
            consumer.subscribe(List.of(topic));
            while (events < max && System.currentTimeMillis() - idleSince < 15_000) {
                for (ConsumerRecord<byte[], byte[]> rec : consumer.poll(Duration.ofMillis(500))) {
                    idleSince = System.currentTimeMillis();
                    GenericRecord r = decoder.decode(rec.value());
                    String key = r.get("image_id") + "|" + r.get("run_id") + "|" + r.get("analysis_version");
                    if (seen.add(key)) {
                        events++;
                        System.out.println(r.get("image_id") + "\t" + r.get("run_id") + "\t" + r.get("status") + "\t" + r.get("caption"));
                    }
                }
            }
        }
    }

    private static int version(Path p) {
        return Integer.parseInt(p.getFileName().toString().replace(".avsc", ""));
    }
}
