"""Schema evolution: every released version of a record is frozen in ``schemas/history/<Record>/<n>.avsc``
(expanded, self-contained), and every version must be able to read data written with every other one,
both ways (FULL_TRANSITIVE in a Confluent registry's words): consumers and producers may then upgrade in
any order, and a consumer reading a topic that still holds old records (or newer ones) never fails.

The check is Apache Avro's own ``SchemaCompatibility`` (Java, resolved from Maven Central into
``CACHE_DIR/jars/avro-<version>`` on first use, run as a single-file program,
``deploy/avro/SchemaCompat.java``): the specification's resolution rules applied to the schemas
themselves, not to sampled data. (Sampling let a dropped required field through: data of the new
version, read by the old schema, misses it.)

``lensflow schemas --check`` fails when a schema file changed without being frozen, or when any two
versions are incompatible; ``lensflow schemas --freeze`` records the current schemas as new versions
after checking them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .codec import SchemaSet
from .settings import get_settings
from .topology import TOPICS

#: Records that travel on topics: the public contract, versioned one by one.
TOPIC_RECORDS = sorted({f"lensflow.v1.{t.record}" for t in TOPICS.values()})


@dataclass
class Finding:
    record: str
    problem: str

    def __str__(self) -> str:
        return f"{self.record}: {self.problem}"


#: Apache Avro's Java library, and where its compatibility program lives (a source checkout).
AVRO_TOOLS = Path(__file__).resolve().parent.parent / "deploy" / "avro"


class CheckerUnavailable(RuntimeError):
    """Java, Maven or the checkout's deploy/avro is missing: one line saying which."""


def avro_jars(cache_dir: Path | None = None) -> Path:
    """The folder of Avro's jars, resolved with Maven on first use (cached; keyed by the pom's SHA-256)."""

    pom = AVRO_TOOLS / "pom.xml"
    if not pom.exists():
        raise CheckerUnavailable(f"the schema check needs a source checkout ({pom} not found)")
    if cache_dir is None:
        cache_dir = get_settings().cache_path
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    target = cache_dir / "jars" / "avro-tools"
    marker = target / ".lensflow-complete"
    if marker.exists() and marker.read_text().strip() == digest:
        return target
    if shutil.which("mvn") is None:
        raise CheckerUnavailable("Maven (mvn) is needed once to fetch Apache Avro's jars for the schema check")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".avro-tools.", dir=target.parent))
    proc = subprocess.run(["mvn", "-B", "-q", "-f", str(pom), "dependency:copy-dependencies", "-DincludeScope=runtime",
                           f"-DoutputDirectory={tmp}"], capture_output=True, text=True)
    if proc.returncode != 0 or not list(tmp.glob("*.jar")):
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckerUnavailable("resolving Apache Avro's jars with Maven failed: " + (proc.stdout + proc.stderr)[-500:])
    (tmp / ".lensflow-complete").write_text(digest)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def incompatibilities(chains: dict[str, list[dict]], cache_dir: Path | None = None) -> list[tuple[str, int, int, str]]:
    """(record, writer version, reader version, why) for every pair of versions of every record that
    Avro's SchemaCompatibility finds incompatible, both ways. Versions count from 1 in chain order."""

    if shutil.which("java") is None:
        raise CheckerUnavailable("Java 17+ is needed for the schema check (Apache Avro's SchemaCompatibility)")
    jars = avro_jars(cache_dir)
    with tempfile.TemporaryDirectory(prefix="lensflow-schemas-") as tmp:
        args = []
        for name, chain in chains.items():
            paths = []
            for i, schema in enumerate(chain, 1):
                path = Path(tmp) / f"{name}.{i}.avsc"
                path.write_text(json.dumps(schema))
                paths.append(str(path))
            args.append(f"{name}={','.join(paths)}")
        proc = subprocess.run(["java", "-cp", f"{jars}/*", str(AVRO_TOOLS / "SchemaCompat.java"), *args],
                              capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise CheckerUnavailable(f"the schema check did not run: {(proc.stderr or proc.stdout).strip()[-500:]}")
    out = []
    for line in proc.stdout.splitlines():
        name, writer, reader, why = line.split("\t", 3)
        out.append((name, int(writer), int(reader), why))
    return out


def _describe(writer: int, reader: int, labels: dict[int, str]) -> str:
    direction = "cannot read" if reader > writer else "(an older reader) cannot read"
    return f"{labels[reader]} {direction} {labels[writer]}"


def check(schemas: SchemaSet | None = None, cache_dir: Path | None = None) -> list[Finding]:
    schemas = schemas or SchemaSet()
    findings: list[Finding] = []
    chains: dict[str, list[dict]] = {}
    labels: dict[str, dict[int, str]] = {}
    changed: dict[str, int] = {}
    for name in TOPIC_RECORDS:
        current = schemas.current.get(name)
        if current is None:
            findings.append(Finding(name, "no schema file"))
            continue
        history = schemas.history.get(name, [])
        if not history:
            findings.append(Finding(name, "not frozen: run `lensflow schemas --freeze`"))
            continue
        chain = [v.schema for v in history]
        labels[name] = {i: f"version {v.version}" for i, v in enumerate(history, 1)}
        latest = history[-1]
        if latest.canonical != current.canonical or latest.schema != current.schema:
            chain.append(current.schema)
            labels[name][len(chain)] = "the current schema"
            changed[name] = latest.version
        chains[name] = chain
    bad: set[str] = set()
    for name, writer, reader, why in incompatibilities(chains, cache_dir):
        bad.add(name)
        what = _describe(writer, reader, labels[name])
        if labels[name][writer] != "the current schema" and labels[name][reader] == "the current schema":
            what = f"current schema cannot read frozen {labels[name][writer]}"
        elif labels[name][writer] == "the current schema":
            what = f"frozen {labels[name][reader]} cannot read the current schema's data"
        findings.append(Finding(name, f"{what}: {why}"))
    for name, version in changed.items():
        if name not in bad:
            findings.append(Finding(name, f"changed since version {version} (compatible): run `lensflow schemas --freeze`"))
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
            problems = incompatibilities({name: [v.schema for v in history] + [current.schema]})
            if problems:
                _, writer, reader, why = problems[0]
                raise ValueError(f"{name}: incompatible with the frozen versions (writer {writer}, reader {reader}): {why}")
        version = history[-1].version + 1 if history else 1
        folder = schemas.directory / "history" / name.rsplit(".", 1)[-1]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{version}.avsc"
        path.write_text(json.dumps(current.schema, indent=1) + "\n")
        written.append(str(path))
    return written
