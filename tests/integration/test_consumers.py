"""The consumer examples of the docs, run against real topics: a Go consumer (franz-go + hamba/avro,
docs/consumers/go) and a Java consumer (kafka-clients +
Avro's BinaryMessageDecoder, docs/consumers/AnalyzedConsumer.java) reads images.analyzed the way a
downstream team would, without lensflow."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lensflow.streams.evolution import avro_jars
from tests.conftest import PHOTOS, ROOT

from .helpers import read_topic

pytestmark = pytest.mark.integration


def test_the_java_consumer_reads_images_analyzed(namespace):
    assert shutil.which("java"), "Java 17+ is needed (it runs the local stack too)"
    namespace.start_worker()
    proc = namespace.cli("submit", "--user", "java", "--wait", "--json", str(PHOTOS / "cat_chelsea.png"),
                         str(PHOTOS / "road_cars_canberra.jpg"))
    submitted = {json.loads(line)["image_id"]: json.loads(line)["run_id"] for line in proc.stdout.splitlines()
                 if line.startswith("{")}
    out = subprocess.run(["java", "-cp", f"{avro_jars()}/*", str(ROOT / "docs" / "consumers" / "AnalyzedConsumer.java"),
                          "127.0.0.1:9092", namespace.topic("images.analyzed"), str(ROOT / "schemas"), str(len(submitted))],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("\t") for line in out.stdout.splitlines() if line.count("\t") == 3]
    assert {(image_id, run_id) for image_id, run_id, _, _ in rows} == set(submitted.items()), out.stdout
    assert {status for _, _, status, _ in rows} == {"complete"}


def go_binary() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    default = Path("/usr/local/go/bin/go")
    return str(default) if default.exists() else None


def test_the_go_consumer_reads_images_analyzed(namespace, tmp_path):
    """docs/consumers/go: franz-go + hamba/avro, built with the Go toolchain (modules from the Go proxy,
    pinned by go.sum)."""
    go = go_binary()
    assert go, "Go 1.24+ is needed for the Go consumer example (it is on every machine of this kind)"
    namespace.start_worker()
    proc = namespace.cli("submit", "--user", "gopher", "--wait", "--json", str(PHOTOS / "cat_chelsea.png"),
                         str(PHOTOS / "road_cars_canberra.jpg"))
    submitted = {json.loads(line)["image_id"]: json.loads(line)["run_id"] for line in proc.stdout.splitlines()
                 if line.startswith("{")}
    src = ROOT / "docs" / "consumers" / "go"
    unit = subprocess.run([go, "test", "./..."], cwd=src, capture_output=True, text=True, timeout=600)
    assert unit.returncode == 0, unit.stdout[-2000:] + unit.stderr[-2000:]  # the fingerprints are Java's
    build = subprocess.run([go, "build", "-o", str(tmp_path / "analyzed-consumer"), "."], cwd=src, capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    events = len(read_topic(namespace.topic("images.analyzed"), idle_s=2))  # this module's other test wrote some too
    out = subprocess.run([str(tmp_path / "analyzed-consumer"), "127.0.0.1:9092", namespace.topic("images.analyzed"),
                          str(ROOT / "schemas"), str(events)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("\t") for line in out.stdout.splitlines() if line.count("\t") == 3]
    rows = [r for r in rows if r[0] in submitted]
    assert {(image_id, run_id) for image_id, run_id, _, _ in rows} == set(submitted.items()), out.stdout + out.stderr
    assert {status for _, _, status, _ in rows} == {"complete"}
