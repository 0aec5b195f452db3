"""Reading topics the way a downstream team would: a plain confluent-kafka consumer and fastavro with
the .avsc files in schemas/ — none of lensflow's own codec."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, TopicPartition
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _writers() -> dict[bytes, dict]:
    out = {}
    for path in SCHEMAS.glob("lensflow.v1.*.avsc"):
        if json.loads(path.read_text()).get("type") != "record":
            continue
        schema = load_schema(str(path), _write_hint=False)
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        out[fp] = fastavro.parse_schema(json.loads(json.dumps(schema)), _write_hint=False)
    return out


WRITERS = _writers()


def decode_single_object(data: bytes) -> dict:
    assert data[:2] == b"\xc3\x01", "not Avro single-object encoding"
    return fastavro.schemaless_reader(io.BytesIO(data[10:]), WRITERS[data[2:10]])


def topic_messages(topic: str, idle_s: float = 3.0, max_s: float = 60.0) -> list:
    """Every message on a topic from the beginning (confluent-kafka ``Message``s: key, value,
    partition, offset), until nothing new arrives for idle_s."""
    consumer = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": f"test-reader-{time.time()}",
                         "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out, last, start = [], time.monotonic(), time.monotonic()
    try:
        while time.monotonic() - last < idle_s and time.monotonic() - start < max_s:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            out.append(msg)
            last = time.monotonic()
    finally:
        consumer.close()
    return out


def read_topic(topic: str, idle_s: float = 3.0, max_s: float = 60.0) -> list[tuple[bytes, dict]]:
    """Every record on a topic from the beginning, until nothing new arrives for idle_s."""
    return [(msg.key(), decode_single_object(msg.value())) for msg in topic_messages(topic, idle_s, max_s)]


def wait_for(predicate, timeout: float, interval: float = 0.5, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
