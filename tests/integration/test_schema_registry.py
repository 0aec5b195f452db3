"""Confluent framing against a real schema registry server: Apicurio Registry's Confluent-compatible
API (started by deploy/local/registry/start.sh, fetched from Maven Central on first use). lensflow's
codec registers under ``<topic>-value``, frames ``00`` + 4-byte big-endian id + Avro body, and a fresh
codec (new registry client) reads the bytes back, also after the subject gained a newer version."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.schema import to_parsing_canonical_form
from fastavro.utils import generate_many

from lensflow.streams.codec import Codec, default_schemas, write_body
from lensflow.streams.evolution import TOPIC_RECORDS
from lensflow.streams.topology import TOPICS
from tests.avro_wire import normalise

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
START = ROOT / "deploy" / "local" / "registry" / "start.sh"
PORT = 18081
URL = f"http://127.0.0.1:{PORT}/apis/ccompat/v7"
SR_JSON = "application/vnd.schemaregistry.v1+json"
RECORD_TOPIC = {f"lensflow.v1.{t.record}": t.name for t in TOPICS.values()}


def registry_log_tail(n: int = 40) -> str:
    log = ROOT / ".lensflow" / "registry" / f"registry-{PORT}.log"
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no registry log)"


@pytest.fixture(scope="module")
def registry():
    """The real registry on 127.0.0.1:18081 (idempotent start); stopped afterwards only if this module started it.
    No skip: a registry that cannot be fetched or started fails the module loudly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENSFLOW_")}
    env.update({"LENSFLOW_REGISTRY_PORT": str(PORT), "LENSFLOW_DATA_DIR": str(ROOT / ".lensflow")})
    was_running = subprocess.run([str(START), "status"], env=env, capture_output=True, text=True).returncode == 0
    up = subprocess.run([str(START), "start"], env=env, capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, f"{START} start failed:\n{up.stderr}\nregistry log:\n{registry_log_tail()}"
    yield URL
    if not was_running:
        subprocess.run([str(START), "stop"], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def http(registry):
    with httpx.Client(base_url=registry, timeout=30) as client:
        yield client


def unique_topic(name: str) -> str:
    """A topic (hence subject) no earlier run can have registered, even on a long-running registry."""
    return f"it{uuid.uuid4().hex[:8]}.{RECORD_TOPIC[name]}"


def fullname_of(schema: dict) -> str:
    name = schema["name"]
    return name if "." in name else f"{schema.get('namespace', '')}.{name}".lstrip(".")


def schema_id_of(data: bytes) -> int:
    assert len(data) > 5 and data[0] == 0, f"not Confluent framing: {bytes(data[:8]).hex()}"
    return struct.unpack(">I", data[1:5])[0]


@pytest.mark.parametrize("name", TOPIC_RECORDS)
def test_confluent_framing_with_the_real_registry(registry, http, name):
    topic = unique_topic(name)
    sv = default_schemas().get(name)
    record = next(iter(generate_many(sv.parsed, 1)))

    data = Codec(registry_url=registry).encode(name, record, topic=topic)

    # framing: magic 0, the id the registry holds for <topic>-value, then exactly the Avro body
    schema_id = schema_id_of(data)
    latest = http.get(f"/subjects/{topic}-value/versions/latest")
    assert latest.status_code == 200, latest.text
    assert latest.json()["id"] == schema_id and latest.json()["version"] == 1
    assert data[5:] == write_body(sv, record)

    # the stored schema is the record's schema
    by_id = http.get(f"/schemas/ids/{schema_id}")
    assert by_id.status_code == 200, by_id.text
    stored = json.loads(by_id.json()["schema"])
    assert by_id.json().get("schemaType", "AVRO") == "AVRO"
    assert fullname_of(stored) == name
    assert [f["name"] for f in stored["fields"]] == [f["name"] for f in sv.schema["fields"]]
    assert to_parsing_canonical_form(stored) == sv.canonical

    # a fresh codec (new registry client, empty caches) decodes it back
    got_name, got = Codec(registry_url=registry).decode(data)
    assert got_name == name
    assert normalise(got) == normalise(record)

    # confluent-kafka's reference deserialiser reads lensflow's bytes from the same registry
    theirs = AvroDeserializer(SchemaRegistryClient({"url": registry}))
    assert normalise(theirs(data, SerializationContext(topic, MessageField.VALUE))) == normalise(record)

    # registering again (another process, same schema) yields the same id
    assert schema_id_of(Codec(registry_url=registry).encode(name, record, topic=topic)) == schema_id


def test_old_bytes_decode_to_the_current_reader_after_the_subject_evolves(registry, http):
    """ImagePrepared v1 (frozen in schemas/history) lacks ``mode`` (default "full"): bytes written with v1
    under its registry id still decode, after the subject gained the current schema, to a current record."""
    name = "lensflow.v1.ImagePrepared"
    schemas = default_schemas()
    v1, current = schemas.history[name][0], schemas.get(name)
    assert "mode" not in {f["name"] for f in v1.schema["fields"]}
    assert "mode" in {f["name"] for f in current.schema["fields"]}
    topic = unique_topic(name)
    subject = f"{topic}-value"

    # an old producer registered v1 and wrote with it
    reg = http.post(f"/subjects/{subject}/versions", json={"schema": json.dumps(v1.schema)}, headers={"Content-Type": SR_JSON})
    assert reg.status_code == 200, reg.text
    old_id = reg.json()["id"]
    old_record = next(iter(generate_many(v1.parsed, 1)))
    old_bytes = struct.pack(">bI", 0, old_id) + write_body(v1, old_record)

    # today's lensflow registers the current schema as version 2 of the same subject
    new_record = next(iter(generate_many(current.parsed, 1)))
    new_bytes = Codec(registry_url=registry).encode(name, new_record, topic=topic)
    new_id = schema_id_of(new_bytes)
    assert new_id != old_id
    assert http.get(f"/subjects/{subject}/versions").json() == [1, 2]
    v2 = http.get(f"/subjects/{subject}/versions/2").json()
    assert v2["id"] == new_id
    assert to_parsing_canonical_form(json.loads(v2["schema"])) == current.canonical
    assert to_parsing_canonical_form(json.loads(http.get(f"/schemas/ids/{old_id}").json()["schema"])) == v1.canonical

    # a fresh reader resolves the old writer schema by id into the current reader schema
    reader = Codec(registry_url=registry)
    got_name, got = reader.decode(old_bytes)
    assert got_name == name
    assert set(got) == {f["name"] for f in current.schema["fields"]}
    assert got["mode"] == "full"
    assert normalise({k: v for k, v in got.items() if k != "mode"}) == normalise(old_record)
    assert normalise(reader.decode(new_bytes)[1]) == normalise(new_record)


class Outage:
    """A TCP forwarder in front of the real registry: ``down()`` closes its port (connections are
    refused, as with a registry that is stopped or unreachable), ``up()`` opens it again. The registry
    keeps its schemas meanwhile (its local storage is in memory: a real restart would lose them)."""

    def __init__(self, target_port: int):
        import socket

        self.target = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.listener = None
        self.up()

    def up(self) -> None:
        import socket
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener

        def pipe(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.close()
                    except OSError:
                        pass

        def serve():
            while True:
                try:
                    client, _ = listener.accept()
                except OSError:
                    return
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                except OSError:
                    client.close()
                    continue
                threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def down(self) -> None:
        import socket

        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None


def test_a_registry_outage_with_a_worker_restart_dead_letters_nothing(registry, stack, tmp_path):
    """The registry unreachable for 30 s while records flow, and the worker restarted during the outage
    (so it has no schema id cached): nothing is dead-lettered as poison, and every image completes
    once the registry is back."""
    from .conftest import Namespace
    from .helpers import topic_messages
    from .promise import photos, stored, submit, wait_stored

    outage = Outage(PORT)
    ns = Namespace(stack, tmp_path / "data", join_timeout_s=30, join_tick_interval_s=1, retry_base_s=0.2, retry_max_s=2,
                   schema_registry_url=f"http://127.0.0.1:{outage.port}/apis/ccompat/v7")
    try:
        ns.cli("init")
        ns.start_worker()
        files = photos(tmp_path / "in", 40, size=(640, 480), seed=41)
        first = submit(ns, "reg", files[:10])
        wait_stored(ns, first, 120)
        rest = submit(ns, "reg", files[10:])  # registered and produced while the registry answers
        outage.down()
        down_at = time.monotonic()
        ns.stop_worker(signal.SIGKILL)  # a crash: no graceful stop waits out the outage first
        ns.start_worker()  # a fresh worker: every schema id must come from the registry, which is down
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        assert ns.worker.poll() is None, "the worker died during the registry outage:\n" + ns.log_tail()
        outage.up()
        wait_stored(ns, set(first) | set(rest), 180)
        assert {s for s, _ in stored(ns).values()} == {"complete"}
        letters = topic_messages(ns.topic("images.deadletter"), idle_s=3)
        assert letters == [], f"{len(letters)} records dead-lettered during the registry outage"
    finally:
        outage.down()
        ns.close()
