// Full transitive compatibility of every record's schema versions, with Avro's own checker
// (org.apache.avro.SchemaCompatibility). Run by `lensflow schemas --check`:
//   java -cp "<avro jars>/*" SchemaCompat.java RECORD=v1.avsc,v2.avsc,... [RECORD=...]
// Each pair of versions is checked both ways: the newer as reader of the older's data (backward)
// and the older as reader of the newer's data (forward). Prints one tab-separated line per
// incompatible pair: record, writer version, reader version, what is wrong. Exit 1 when any.
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.apache.avro.Schema;
import org.apache.avro.SchemaCompatibility;

public class SchemaCompat {
    public static void main(String[] args) throws Exception {
        int bad = 0;
        for (String arg : args) {
            String[] kv = arg.split("=", 2);
            List<Schema> versions = new ArrayList<>();
            for (String p : kv[1].split(",")) {
                versions.add(new Schema.Parser().parse(Files.readString(Path.of(p))));
            }
            for (int w = 0; w < versions.size(); w++) {
                for (int r = 0; r < versions.size(); r++) {
                    if (w == r) continue;
                    SchemaCompatibility.SchemaPairCompatibility pair =
                        SchemaCompatibility.checkReaderWriterCompatibility(versions.get(r), versions.get(w));
                    if (pair.getType() != SchemaCompatibility.SchemaCompatibilityType.COMPATIBLE) {
                        bad++;
                        StringBuilder why = new StringBuilder();
                        for (SchemaCompatibility.Incompatibility i : pair.getResult().getIncompatibilities()) {
                            if (why.length() > 0) why.append("; ");
                            why.append(i.getType()).append(" at ").append(i.getLocation()).append(": ").append(i.getMessage());
                        }
                        System.out.println(kv[0] + "\t" + (w + 1) + "\t" + (r + 1) + "\t" + why.toString().replace('\n', ' '));
                    }
                }
            }
        }
        System.exit(bad == 0 ? 0 : 1);
    }
}
