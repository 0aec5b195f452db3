"""The grounded captioner says what the stages found, and nothing more."""

import pytest

from lensflow.agents.describe import caption, check_captioner, semantic_text
from lensflow.streams.models import ModelError


def det(label, conf=0.9):
    return {"label": label, "class_id": 0, "confidence": conf, "box": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}


def agg(objects=(), places=(), env=None, names=(), faces=0, text=""):
    return {
        "objects": {"status": "ok", "detections": [det(x) for x in objects]},
        "scene": {"status": "ok", "places": [{"label": p, "score": 0.5} for p in places],
                  "environment": {"label": env, "score": 0.9} if env else None, "events": [], "classes": []},
        "faces": {"status": "ok", "faces": [{"person_name": n} for n in names] + [{"person_name": None}] * faces},
        "text": {"status": "ok", "text": text},
    }


def test_counts_and_names_objects_in_a_place():
    assert caption(agg(objects=["car", "car", "dog"], places=["street"])) == "Two cars and a dog in a street."


def test_people_by_name_then_the_others():
    assert caption(agg(objects=["person", "person"], names=["Ada"], env="indoor")) == "Ada and another person, indoors."


def test_quotes_the_text():
    assert caption(agg(places=["shop"], text="EIN RADEBERGER Pilsner seit 1872 and more")) == \
        'A photo of a shop; the text reads "EIN RADEBERGER Pilsner seit 1872 and".'


def test_failed_stages_contribute_nothing():
    a = agg(objects=["cat"], places=["kitchen"])
    a["objects"]["status"] = "failed"
    assert caption(a) == "A photo of a kitchen."
    assert caption({}) == "A photo."


def test_low_confidence_objects_are_left_out():
    a = agg(places=["beach"])
    a["objects"]["detections"] = [det("dog", 0.2)]
    assert caption(a) == "A photo of a beach."


def test_semantic_text_carries_every_fact():
    s = semantic_text(agg(objects=["car"], places=["street"], names=["Ada"], text="STOP"), "A car.")
    for fact in ["A car.", "street", "car", "Ada", "STOP"]:
        assert fact in s


def test_captioner_setting(tmp_path):
    from tests.captioner_model import build

    assert check_captioner("grounded") is None
    with pytest.raises(ModelError, match="not a directory"):
        check_captioner("onnx:/nonexistent/model")
    with pytest.raises(ModelError, match="optimum-cli export onnx --model /some/model"):
        check_captioner("transformers:/some/model")
    with pytest.raises(ModelError, match="unknown"):
        check_captioner("magic")
    assert check_captioner(f"onnx:{build(tmp_path / 'm')}") == tmp_path / "m"
