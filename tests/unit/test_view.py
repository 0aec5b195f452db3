"""What `show` presents of a stored aggregate, and the boxes `show --render` draws."""

from PIL import Image

from lensflow.streams.view import analysis_of, boxes_of, render, summary_of, without_vectors


def aggregate():
    box = {"x1": 100.0, "y1": 50.0, "x2": 300.0, "y2": 250.0}
    return {
        "prepared": {"original_width": 800, "original_height": 600},
        "results": {
            "objects": {"status": "ok", "detections": [{"label": "dog", "class_id": 16, "confidence": 0.5, "box": box},
                                                       {"label": "car", "class_id": 2, "confidence": 0.9, "box": box}]},
            "faces": {"status": "ok", "faces": [{"box": box, "confidence": 0.99, "person_id": "p1", "person_name": "Ada",
                                                 "encoding": [0.1] * 128, "landmarks": []}]},
            "text": {"status": "ok", "text": "Grüße aus Köln " * 30, "language": "de",
                     "lines": [{"text": "Grüße aus Köln", "confidence": 0.97, "box": {"x1": 400, "y1": 400, "x2": 700, "y2": 440}}]},
            "scene": {"status": "ok", "environment": {"label": "outdoor", "score": 0.8},
                      "places": [{"label": "street", "score": 0.4}], "events": [],
                      "classes": [{"label": f"c{i}", "score": 0.1} for i in range(9)]},
            "embedding": {"status": "ok", "vector": [0.0] * 1280},
            "describe": {"status": "ok", "caption": "Two cars in a street.", "semantic_vector": [0.0] * 384},
            "metadata": {"status": "ok", "camera_make": "Canon", "camera_model": None, "gps": {"lat": 1.0, "lon": 2.0},
                         "place": {"city": "Köln", "region": None, "country": "Germany"}},
            "safety": {"status": "failed", "nsfw_score": None},
        },
    }


def test_every_section_is_shown_and_a_failed_stage_is_none():
    a = analysis_of(aggregate())
    assert a["caption"] == "Two cars in a street."
    assert [o["label"] for o in a["objects"]] == ["car", "dog"]  # most confident first
    assert a["faces"][0]["person_name"] == "Ada" and "encoding" not in a["faces"][0]
    assert a["text"]["language"] == "de" and a["text"]["lines"][0]["text"] == "Grüße aus Köln"
    assert len(a["scene"]["classes"]) == 5 and a["scene"]["environment"]["label"] == "outdoor"
    assert a["metadata"] == {"camera_make": "Canon", "gps": {"lat": 1.0, "lon": 2.0},
                             "place": {"city": "Köln", "region": None, "country": "Germany"}}
    assert a["safety"] is None


def test_summary_counts_and_cuts_the_text():
    s = summary_of(analysis_of(aggregate()))
    assert s["objects"] == 2 and s["faces"] == 1 and s["people"] == ["Ada"] and s["text_lines"] == 1
    assert s["place"] == "Köln, Germany" and s["language"] == "de" and s["nsfw_score"] is None
    assert len(s["text_excerpt"]) == 280 and s["text_excerpt"].endswith("…")


def test_vectors_are_replaced_by_their_length():
    agg = aggregate()
    out = without_vectors(agg)
    assert out["results"]["embedding"]["vector_dim"] == 1280 and "vector" not in out["results"]["embedding"]
    assert out["results"]["describe"]["semantic_vector_dim"] == 384
    assert out["results"]["faces"]["faces"][0]["encoding_dim"] == 128
    assert "vector" in agg["results"]["embedding"]  # the input is left alone


def test_render_draws_every_box_scaled_to_the_copy():
    a = analysis_of(aggregate())
    assert [k for k, _, _ in boxes_of(a)] == ["object", "object", "face", "text"]
    plain = Image.new("RGB", (400, 300), (40, 40, 40))  # half the original's size
    drawn = render(plain, a)
    assert drawn.size == plain.size and plain.getpixel((50, 25)) == (40, 40, 40)  # the input is not drawn on
    assert drawn.getpixel((50, 60)) != (40, 40, 40)  # left edge of the 100,50-300,250 box, halved
    assert drawn.getpixel((100, 100)) == (40, 40, 40)  # inside the box: untouched
    assert drawn.getpixel((399, 299)) == (40, 40, 40)
