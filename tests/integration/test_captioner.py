"""The generative captioner backend (LENSFLOW_CAPTIONER=onnx:DIR) through the real describe stage:
Kafka, the join, Cassandra and Qdrant, with the small deterministic ONNX image-to-text model of
tests/captioner_model.py (no real captioning weights are reachable here)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.captioner_model import BRIGHT, DARK, build

from .conftest import Namespace, run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def captioned(stack, tmp_path_factory):
    run(["models", "prepare", "minilm-l6-v2"], stack, timeout=900)
    work = tmp_path_factory.mktemp("captioner")
    model = build(work / "model")
    ns = Namespace(stack, work / "data", join_timeout_s=4, join_tick_interval_s=1, captioner=f"onnx:{model}")
    ns.cli("init")
    light, dark = work / "light.jpg", work / "dark.jpg"
    Image.new("RGB", (640, 480), (235, 230, 220)).save(light, quality=90)
    Image.new("RGB", (480, 640), (15, 15, 35)).save(dark, quality=90)
    try:
        ns.start_worker(stages="preprocess,join,describe")
        proc = ns.cli("submit", "--user", "cara", "--wait", "--json", "--stages", "describe", "--timeout", "120",
                      str(light), str(dark))
        results = {json.loads(line)["file"].rsplit("/", 1)[-1]: json.loads(line) for line in proc.stdout.splitlines()
                   if line.startswith("{")}
        yield ns, model, results
    finally:
        ns.close()


def test_the_caption_comes_from_the_model(captioned):
    ns, _, results = captioned
    assert {r["status"] for r in results.values()} == {"complete"}
    captions = {name: ns.cql.execute("SELECT caption FROM images WHERE image_id = %s", (r["image_id"],)).one().caption
                for name, r in results.items()}
    assert captions == {"light.jpg": BRIGHT, "dark.jpg": DARK}


def test_the_result_names_the_model_that_wrote_it(captioned):
    from lensflow.agents.captioner import OnnxCaptioner
    from lensflow.streams.codec import Codec

    ns, model, results = captioned
    image_id = results["dark.jpg"]["image_id"]
    row = ns.cql.execute("SELECT run_id FROM images WHERE image_id = %s", (image_id,)).one()
    records = ns.cql.execute("SELECT stage_records FROM analysis_results WHERE image_id = %s AND run_id = %s",
                             (image_id, row.run_id)).one().stage_records
    described = Codec().decode(records["describe"])[1]
    assert described["status"] == "ok" and described["caption"] == DARK
    assert described["model"] == OnnxCaptioner(model).load().ref.to_avro()
    assert len(described["semantic_vector"]) == 384


def test_text_search_finds_the_generated_caption(captioned):
    ns, _, results = captioned
    found = json.loads(ns.cli("search", "--user", "cara", "--text", "a dark night picture", "--json").stdout)
    assert found[0]["image_id"] == results["dark.jpg"]["image_id"]
