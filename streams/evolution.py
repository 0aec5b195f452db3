"""Schema evolution: every released version of a record is frozen in ``schemas/history/<Record>/<n>.avsc``
(expanded, self-contained), and each version must read data written with the one before it
(BACKWARD compatibility, the Confluent registry's default), so consumers can upgrade first.

``lensflow schemas --check`` fails when a schema file changed without being frozen, or when a
frozen chain is not backward compatible; ``lensflow schemas --freeze`` records the current schemas as
new versions after checking them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import fastavro
from fastavro.utils import generate_many

from .codec import SchemaSet, SchemaVersion
from .topology import TOPICS

#: Records that travel on topics: the public contract, versioned one by one.
TOPIC_RECORDS = sorted({f"lensflow.v1.{t.record}" for t in TOPICS.values()})


@dataclass
class Finding:
    record: str
    problem: str

    def __str__(self) -> str:
        return f"{self.record}: {self.problem}"


def backward_problem(old: dict, new: dict, samples: int = 25) -> str | None:
    """None when data written with ``old`` reads with ``new``; else the reason."""
    old_parsed = fastavro.parse_schema(old, _write_hint=False)
    new_parsed = fastavro.parse_schema(new, _write_hint=False)
    try:
        for record in generate_many(old_parsed, samples):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, old_parsed, record)
            buf.seek(0)
            fastavro.schemaless_reader(buf, old_parsed, new_parsed)
    except Exception as exc:  # SchemaResolutionError and friends
        return f"{type(exc).__name__}: {exc}"
    return None


def check(schemas: SchemaSet | None = None) -> list[Finding]:
    schemas = schemas or SchemaSet()
    findings: list[Finding] = []
    for name in TOPIC_RECORDS:
        current = schemas.current.get(name)
        if current is None:
            findings.append(Finding(name, "no schema file"))
            continue
        history = schemas.history.get(name, [])
        if not history:
            findings.append(Finding(name, "not frozen: run `lensflow schemas --freeze`"))
            continue
        chain: list[SchemaVersion] = list(history)
        for older, newer in zip(chain, chain[1:]):
            problem = backward_problem(older.schema, newer.schema)
            if problem:
                findings.append(Finding(name, f"version {newer.version} cannot read version {older.version}: {problem}"))
        latest = chain[-1]
        if latest.canonical != current.canonical or latest.schema != current.schema:
            problem = backward_problem(latest.schema, current.schema)
            if problem:
                findings.append(Finding(name, f"current schema cannot read frozen version {latest.version}: {problem}"))
            else:
                findings.append(Finding(name, f"changed since version {latest.version} (compatible): run `lensflow schemas --freeze`"))
    return findings


def freeze(schemas: SchemaSet | None = None) -> list[str]:
    """Write a new history version for every changed record; refuses incompatible changes."""
    schemas = schemas or SchemaSet()
    written = []
    for name in TOPIC_RECORDS:
        current = schemas.current[name]
        history = schemas.history.get(name, [])
        if history and history[-1].schema == current.schema:
            continue
        if history:
            problem = backward_problem(history[-1].schema, current.schema)
            if problem:
                raise ValueError(f"{name}: incompatible with version {history[-1].version}: {problem}")
        version = history[-1].version + 1 if history else 1
        folder = schemas.directory / "history" / name.rsplit(".", 1)[-1]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{version}.avsc"
        path.write_text(json.dumps(current.schema, indent=1) + "\n")
        written.append(str(path))
    return written
