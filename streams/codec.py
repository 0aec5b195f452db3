"""Avro encoding of every lensflow record, on fastavro.

Wire formats (decoders accept both, whatever the writer chose):

* **Avro single-object encoding** (default): ``C3 01`` + the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's parsing canonical form + the Avro binary body. The writer
  schema is found by fingerprint among the schemas in ``schemas/`` and their frozen history, so
  data written by an older lensflow still decodes (fastavro schema resolution to the current
  reader schema).
* **Confluent framing** (when ``LENSFLOW_SCHEMA_REGISTRY_URL`` is set): ``00`` + 4-byte big-endian
  schema id + body; schemas are registered under ``<topic>-value`` (TopicNameStrategy), exactly as
  confluent-kafka's AvroSerializer does, so either side can read the other's bytes.

Records are written from the generated types of ``avro_types.py`` (``to_avro()``) or from dicts shaped
like their schema, and read as dicts; ``timestamp-millis`` fields are written from datetimes or ints
(epoch ms) and read as datetimes. Schema files use named-type references (``lensflow.v1.Box``) that
fastavro resolves from sibling files; the expanded form is what is fingerprinted and registered.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

from .avro_types import AvroRecord
from .security import registry_conf

NAMESPACE = "lensflow.v1"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0


class CodecError(ValueError):
    """Bytes that are not a lensflow record (unknown framing, unknown schema, corrupt body)."""


def schemas_dir() -> Path:
    return Path(str(resources.files("lensflow.schemas")))


def fullname(name: str) -> str:
    return name if "." in name else f"{NAMESPACE}.{name}"


@dataclass(frozen=True)
class SchemaVersion:
    name: str  # full name
    version: int | None  # history version, None for the current file only
    schema: dict  # expanded JSON schema
    parsed: Any  # fastavro parsed schema

    @cached_property
    def canonical(self) -> str:
        return to_parsing_canonical_form(self.schema)

    @cached_property
    def fingerprint(self) -> bytes:
        return bytes.fromhex(fingerprint(self.canonical, "CRC-64-AVRO"))


def _expand(path: Path) -> dict:
    schema = load_schema(str(path), _write_hint=False)
    return json.loads(json.dumps(schema))  # plain JSON (load_schema may return its own dict subclasses)


class SchemaSet:
    """The current schema of every record plus the frozen history, indexed by fingerprint."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory or schemas_dir()
        self.current: dict[str, SchemaVersion] = {}
        self.history: dict[str, list[SchemaVersion]] = {}
        self.by_fingerprint: dict[bytes, SchemaVersion] = {}
        for path in sorted(self.directory.glob(f"{NAMESPACE}.*.avsc")):
            raw = json.loads(path.read_text())
            if raw.get("type") != "record":
                continue
            schema = _expand(path)
            sv = SchemaVersion(fullname(raw["name"]), None, schema, fastavro.parse_schema(schema, _write_hint=False))
            self.current[sv.name] = sv
            self.by_fingerprint[sv.fingerprint] = sv
        hist = self.directory / "history"
        for folder in sorted(p for p in hist.glob("*") if p.is_dir()):
            versions = []
            for f in sorted(folder.glob("*.avsc"), key=lambda p: int(p.stem)):
                schema = json.loads(f.read_text())
                sv = SchemaVersion(fullname(folder.name), int(f.stem), schema, fastavro.parse_schema(schema, _write_hint=False))
                versions.append(sv)
                self.by_fingerprint.setdefault(sv.fingerprint, sv)
            self.history[fullname(folder.name)] = versions

    def get(self, name: str) -> SchemaVersion:
        try:
            return self.current[fullname(name)]
        except KeyError:
            raise CodecError(f"no schema named {fullname(name)} in {self.directory}") from None


_DEFAULT_SET: SchemaSet | None = None


def default_schemas() -> SchemaSet:
    global _DEFAULT_SET
    if _DEFAULT_SET is None:
        _DEFAULT_SET = SchemaSet()
    return _DEFAULT_SET


def write_body(sv: SchemaVersion, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, sv.parsed, record, strict_allow_default=True)
    return buf.getvalue()


def read_body(data: bytes | memoryview, writer: SchemaVersion | Any, reader: SchemaVersion | None) -> dict:
    wparsed = writer.parsed if isinstance(writer, SchemaVersion) else writer
    rparsed = reader.parsed if reader is not None else None
    if rparsed is wparsed:
        rparsed = None
    return fastavro.schemaless_reader(io.BytesIO(data), wparsed, rparsed)


class Codec:
    """Encode/decode lensflow records. One instance per process; thread-safe for reads."""

    @classmethod
    def for_settings(cls, settings) -> "Codec":
        """The codec of a worker or CLI command: the schema registry (and its credentials) from settings."""

        return cls(registry_url=settings.schema_registry_url, registry_conf=registry_conf(settings))

    def __init__(self, schemas: SchemaSet | None = None, registry_url: str | None = None, registry: Any = None,
                 registry_conf: dict | None = None):
        self.schemas = schemas or default_schemas()
        self.registry_url = registry_url
        self.registry_conf = dict(registry_conf or {})
        self._registry = registry
        self._ids: dict[tuple[str, str], int] = {}  # (subject, name) -> schema id
        self._writers: dict[int, tuple[str, Any]] = {}  # schema id -> (full name, parsed writer)
        self._unknown: set[int] = set()  # schema ids the registry answered 404 for

    @property
    def registry(self):
        if self._registry is None:
            if not self.registry_url:
                raise CodecError("record is in Confluent framing but no schema registry is configured (LENSFLOW_SCHEMA_REGISTRY_URL)")
            from confluent_kafka.schema_registry import SchemaRegistryClient  # lazy: only with a registry configured

            self._registry = SchemaRegistryClient.new_client({"url": self.registry_url, **self.registry_conf})  # mock:// for tests
        return self._registry

    # encoding --------------------------------------------------------------------------------
    def encode(self, name: str, record: AvroRecord | dict, topic: str | None = None) -> bytes:
        """The record ``name`` in single-object encoding (Confluent framing with a registry). ``record``: its
        generated type (what stages build) or a dict shaped like the schema (a decoded record re-sent)."""
        sv = self.schemas.get(name)
        if isinstance(record, AvroRecord):
            if record.AVRO_NAME != sv.name:
                raise CodecError(f"a {record.AVRO_NAME} cannot be encoded as {sv.name}")
            record = record.to_avro()
        try:
            body = write_body(sv, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CodecError(f"record does not match {sv.name}: {exc}") from exc
        if self.registry_url or self._registry is not None:
            if topic is None:
                raise CodecError("Confluent framing needs the topic (subject <topic>-value)")
            return struct.pack(">bI", CONFLUENT_MAGIC, self._schema_id(f"{topic}-value", sv)) + body
        return SINGLE_OBJECT_MAGIC + sv.fingerprint + body

    def registered(self, name: str, topic: str | None) -> bool:
        """Whether encoding ``name`` for ``topic`` can go without a registry request (no registry, or its
        schema id is cached): when not, call ``register`` off the event loop first."""
        if not (self.registry_url or self._registry is not None) or topic is None:
            return True
        return (f"{topic}-value", self.schemas.get(name).name) in self._ids

    def register(self, name: str, topic: str) -> int:
        """The registry's id of ``name`` under ``<topic>-value``, registering it if needed (blocking I/O)."""
        return self._schema_id(f"{topic}-value", self.schemas.get(name))

    def _schema_id(self, subject: str, sv: SchemaVersion) -> int:
        key = (subject, sv.name)
        if key not in self._ids:
            from confluent_kafka.schema_registry import Schema  # lazy: only with a registry configured

            self._ids[key] = self.registry.register_schema(subject, Schema(json.dumps(sv.schema), "AVRO"))
        return self._ids[key]

    # decoding --------------------------------------------------------------------------------
    def decode(self, data: bytes, expect: str | None = None) -> tuple[str, dict]:
        """Return (record full name, record). ``expect`` checks the record type."""
        if data is None or len(data) < 5:
            raise CodecError("empty or truncated record")
        view = memoryview(data)
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise CodecError("truncated single-object header")
            writer = self.schemas.by_fingerprint.get(bytes(view[2:10]))
            if writer is None:
                raise CodecError(f"unknown schema fingerprint {bytes(view[2:10]).hex()}")
            name, wparsed, body = writer.name, writer.parsed, view[10:]
        elif data[0] == CONFLUENT_MAGIC:
            (schema_id,) = struct.unpack(">I", view[1:5])
            name, wparsed = self._writer_for_id(schema_id)
            body = view[5:]
        else:
            raise CodecError(f"unknown framing (first byte 0x{data[0]:02x}): not Avro single-object nor Confluent")
        if expect is not None and fullname(expect) != name:
            raise CodecError(f"expected {fullname(expect)}, got {name}")
        reader = self.schemas.current.get(name)
        try:
            return name, read_body(body, wparsed, reader)
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise CodecError(f"corrupt {name} body: {exc}") from exc

    def prefetch(self, values) -> None:
        """Fetch the writer schemas of the Confluent-framed ``values`` not cached yet (call it off the event
        loop: each unknown id is one registry request). Raises what ``_writer_for_id`` raises for a registry
        that is down (transient); an id the registry does not know is remembered and left to ``decode``."""
        ids = {struct.unpack(">I", v[1:5])[0] for v in values
               if v is not None and len(v) >= 5 and v[0] == CONFLUENT_MAGIC}
        for schema_id in ids - self._writers.keys() - self._unknown:
            try:
                self._writer_for_id(schema_id)
            except CodecError:
                pass  # poison: decode reports it per record

    def _writer_for_id(self, schema_id: int) -> tuple[str, Any]:
        """The writer schema of a Confluent schema id. An id the registry answers 404 for is cached as
        unknown (``CodecError``: the record is poison, and the registry is not asked again for it); a
        registry that cannot be reached, answers 5xx/429 or refuses our credentials raises its own
        exception (httpx's, or ``SchemaRegistryError``), which the error policy treats as an outage."""
        if schema_id in self._unknown:
            raise CodecError(f"schema id {schema_id} is not in the schema registry")
        if schema_id not in self._writers:
            try:
                found = self.registry.get_schema(schema_id)
            except Exception as exc:
                if getattr(exc, "http_status_code", None) == 404:
                    self._unknown.add(schema_id)
                    raise CodecError(f"schema id {schema_id} is not in the schema registry") from None
                raise
            schema = json.loads(found.schema_str)
            name = fullname(schema["name"]) if "namespace" not in schema else f"{schema['namespace']}.{schema['name'].split('.')[-1]}"
            self._writers[schema_id] = (name, fastavro.parse_schema(schema, _write_hint=False))
        return self._writers[schema_id]
