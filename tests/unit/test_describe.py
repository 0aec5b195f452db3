"""The grounded captioner says what the stages found, and nothing more."""

import pytest

from lensflow.agents.describe import caption, check_captioner, semantic_text
from lensflow.streams.models import ModelError


def det(label, conf=0.9):
    return {"label": label, "class_id": 0, "confidence": conf, "box": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}


def agg(objects=(), places=(), env=None, names=(), faces=0, text="", classes=(), place_score=0.5, md=None):
    return {
        "objects": {"status": "ok", "detections": [det(x) if isinstance(x, str) else det(*x) for x in objects]},
        "scene": {"status": "ok", "places": [{"label": p, "score": place_score} for p in places],
                  "environment": {"label": env, "score": 0.9} if env else None, "events": [],
                  "classes": [{"label": c, "score": sc} for c, sc in classes]},
        "metadata": {"status": "ok", **(md or {})},
        "faces": {"status": "ok", "faces": [{"person_name": n} for n in names] + [{"person_name": None}] * faces},
        "text": {"status": "ok", "text": text},
    }


def test_counts_and_names_objects_in_a_place():
    assert caption(agg(objects=["car", "car", "dog"], places=["street"])) == "Two cars and a dog on a street."


def test_people_by_name_then_the_others():
    assert caption(agg(objects=["person", "person"], names=["Ada"], env="indoor")) == "Ada and another person indoors."


def test_quotes_the_text():
    assert caption(agg(places=["shop"], text="EIN RADEBERGER Pilsner seit 1872 and more")) == \
        'A photo taken in a shop; the text reads "EIN RADEBERGER Pilsner seit 1872 and".'


def test_failed_stages_contribute_nothing():
    a = agg(objects=["cat"], places=["kitchen"])
    a["objects"]["status"] = "failed"
    assert caption(a) == "A photo taken in a kitchen."
    assert caption({}) == "A photo."


def test_low_confidence_objects_are_left_out():
    a = agg(places=["beach"])
    a["objects"]["detections"] = [det("dog", 0.2)]
    assert caption(a) == "A photo taken on a beach."


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


ROCKET = [("missile", 0.30), ("projectile", 0.20), ("drilling platform", 0.09), ("space shuttle", 0.05), ("mosque", 0.02)]


def test_confident_imagenet_classes_are_named_through_the_lexicon():
    # the scene classes of scikit-image's rocket.jpg (a Falcon 9 launch): 0.55 of rocket in three classes
    assert caption(agg(classes=ROCKET, env="outdoor")) == "A rocket outdoors."
    # its cameraman: a person behind a tripod-mounted camera
    assert caption(agg(objects=[("person", 0.59)], classes=[("tripod", 0.94), ("harmonica", 0.01)])) == \
        "A person with a camera on a tripod."
    # a concept names the one object it is more precise about: an espresso, not a cup
    assert caption(agg(objects=[("cup", 0.58)], classes=[("espresso", 0.95)], env="indoor")) == "An espresso indoors."
    # ... but two cars stay two cars
    assert caption(agg(objects=["car", "car"], classes=[("sports car", 0.8)])) == "Two cars."
    # weak evidence is not named
    assert caption(agg(classes=[("missile", 0.15), ("football helmet", 0.16)], env="outdoor")) == "A photo taken outdoors."


def test_place_year_and_an_unsure_place():
    from datetime import datetime, timezone

    md = {"taken_at": datetime(2019, 5, 1, tzinfo=timezone.utc),
          "place": {"city": "Prague", "region": "Praha", "country": "Czechia", "country_code": "CZ"}}
    assert caption(agg(objects=["person"], places=["street"], md=md)) == "A person on a street in Prague, Czechia, in 2019."
    assert caption(agg(objects=["person"], env="outdoor", md={"taken_at": md["taken_at"]})) == "A person outdoors in 2019."
    # "a person in a snow" was said on 0.10 of snow: an unsure place falls back to outdoors, and snow is "the snow"
    assert caption(agg(objects=["person"], places=["snow"], place_score=0.10, env="outdoor")) == "A person outdoors."
    assert caption(agg(objects=["person"], places=["snow"], place_score=0.4)) == "A person in the snow."


def test_semantic_text_carries_concepts_and_their_extra_tags():
    s = semantic_text(agg(objects=["person"], classes=[("tripod", 0.94)]), "A person with a camera on a tripod.")
    assert "camera" in s.split(". ") and "tripod" in s.split(". ")
    md = {"place": {"city": "Dresden", "region": "Saxony", "country": "Germany"}, "keywords": ["Frauenkirche"], "title": "Baroque"}
    s = semantic_text(agg(md=md), "A photo.")
    for fact in ["Dresden", "Saxony", "Germany", "Frauenkirche", "Baroque"]:
        assert fact in s
