"""The consumer examples of the docs, run against real topics: a Java consumer (kafka-clients +
Avro's BinaryMessageDecoder, docs/consumers/AnalyzedConsumer.java) reads images.analyzed the way a
downstream team would, without lensflow."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from lensflow.streams.evolution import avro_jars
from tests.conftest import PHOTOS, ROOT

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
