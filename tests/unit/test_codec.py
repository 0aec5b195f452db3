"""The Avro codec: single-object encoding, Confluent framing, interop with confluent-kafka's reference
(de)serialiser, and decoding of data written with older frozen schema versions."""

import io
import json
import struct

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.utils import generate_many

from lensflow.streams.codec import Codec, CodecError, SchemaSet, default_schemas
from lensflow.streams.evolution import TOPIC_RECORDS
from lensflow.streams.topology import TOPICS
from tests.avro_wire import normalise

RECORD_TOPIC = {f"lensflow.v1.{t.record}": t.name for t in TOPICS.values()}


def samples(name, n=5):
    return list(generate_many(default_schemas().get(name).parsed, n))


def test_crc64_avro_fingerprint_matches_the_spec_test_vector():
    # Avro spec test data: the fingerprint of "int" is 8247732601305521295 (0x7275d51a3f395c8f)
    from fastavro.schema import fingerprint
    assert bytes.fromhex(fingerprint('"int"', "CRC-64-AVRO")) == (8247732601305521295).to_bytes(8, "little")


@pytest.mark.parametrize("name", TOPIC_RECORDS)
def test_single_object_roundtrip_every_topic_record(name):
    codec = Codec()
    sv = codec.schemas.get(name)
    for record in samples(name):
        data = codec.encode(name, record)
        assert data[:2] == b"\xc3\x01" and data[2:10] == sv.fingerprint
        got_name, got = codec.decode(data)
        assert got_name == name
        assert normalise(got) == normalise(record)


@pytest.mark.parametrize("name", TOPIC_RECORDS)
def test_confluent_framing_roundtrip_and_interop_with_reference_client(name):
    topic = RECORD_TOPIC[name]
    registry = SchemaRegistryClient.new_client({"url": "mock://interop-" + name})
    ours = Codec(registry=registry)
    ctx = SerializationContext(topic, MessageField.VALUE)
    theirs_out = AvroDeserializer(registry)
    theirs_in = AvroSerializer(registry, json.dumps(ours.schemas.get(name).schema), conf={"auto.register.schemas": True})
    for record in samples(name, 3):
        data = ours.encode(name, record, topic=topic)
        assert data[0] == 0 and len(data) > 5
        # lensflow -> confluent-kafka
        assert normalise(theirs_out(data, ctx)) == normalise(record)
        # confluent-kafka -> lensflow
        assert normalise(ours.decode(theirs_in(record, ctx))[1]) == normalise(record)


def test_decoder_accepts_both_framings_in_one_stream():
    registry = SchemaRegistryClient.new_client({"url": "mock://both"})
    record = samples("ImageUploaded", 1)[0]
    single = Codec().encode("ImageUploaded", record)
    framed = Codec(registry=registry).encode("ImageUploaded", record, topic="images.uploaded")
    reader = Codec(registry=registry)
    assert normalise(reader.decode(single)[1]) == normalise(reader.decode(framed)[1]) == normalise(record)


def test_confluent_bytes_without_a_registry_are_a_clear_error():
    registry = SchemaRegistryClient.new_client({"url": "mock://noreg"})
    framed = Codec(registry=registry).encode("ImageUploaded", samples("ImageUploaded", 1)[0], topic="t")
    with pytest.raises(CodecError, match="no schema registry"):
        Codec().decode(framed)


@pytest.mark.parametrize("data", [b"", b"\x01\x02\x03\x04\x05\x06", b"\xc3\x01" + b"\x00" * 8 + b"xx", b"{json: 1}"])
def test_garbage_is_a_codec_error(data):
    with pytest.raises(CodecError):
        Codec().decode(data)


def test_truncated_body_is_a_codec_error():
    data = Codec().encode("ImageUploaded", samples("ImageUploaded", 1)[0])
    with pytest.raises(CodecError):
        Codec().decode(data[:14])


def test_wrong_record_type_is_rejected_when_one_is_expected():
    data = Codec().encode("JoinTick", samples("JoinTick", 1)[0])
    with pytest.raises(CodecError, match="expected lensflow.v1.ImageUploaded"):
        Codec().decode(data, expect="ImageUploaded")


def test_encode_rejects_unknown_fields():
    record = samples("JoinTick", 1)[0] | {"typo_field": 1}
    with pytest.raises(CodecError, match="does not match"):
        Codec().encode("JoinTick", record)


def test_data_written_with_an_older_version_decodes_to_the_current_reader(tmp_path):
    """A v1 writer without a field, a v2 reader that added it with a default: old bytes still decode."""
    old = {"type": "record", "name": "JoinTick", "namespace": "lensflow.v1",
           "fields": [{"name": "image_id", "type": "string"}]}
    new = {"type": "record", "name": "JoinTick", "namespace": "lensflow.v1",
           "fields": [{"name": "image_id", "type": "string"}, {"name": "reason", "type": "string", "default": "timeout"}]}
    (tmp_path / "lensflow.v1.JoinTick.avsc").write_text(json.dumps(new))
    (tmp_path / "history" / "JoinTick").mkdir(parents=True)
    (tmp_path / "history" / "JoinTick" / "1.avsc").write_text(json.dumps(old))
    (tmp_path / "history" / "JoinTick" / "2.avsc").write_text(json.dumps(new))
    sset = SchemaSet(tmp_path)
    v1 = sset.history["lensflow.v1.JoinTick"][0]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v1.parsed, {"image_id": "abc"})
    old_bytes = b"\xc3\x01" + v1.fingerprint + buf.getvalue()
    name, record = Codec(sset).decode(old_bytes)
    assert name == "lensflow.v1.JoinTick" and record == {"image_id": "abc", "reason": "timeout"}
