"""Model stages on the real stack: faces matched per user in Qdrant, scene, and the visual vector
stored in Cassandra and Qdrant. Semantics, not shapes."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PHOTOS

from .conftest import LENSFLOW, run

pytestmark = pytest.mark.integration

STAGES = "faces,scene,embedding"


@pytest.fixture(scope="module")
def models(stack):
    run(["models", "prepare", "dlib-faces", "efficientnet-lite0"], stack)


def submit(ns, user, *names):
    proc = ns.cli("submit", "--user", user, "--wait", "--json", "--stages", STAGES, "--timeout", "180",
                  *(str(PHOTOS / n) for n in names))
    return {json.loads(line)["file"].rsplit("/", 1)[-1]: json.loads(line) for line in proc.stdout.splitlines()
            if line.startswith("{")}


def faces_of(ns, image_id):
    from lensflow.streams.codec import Codec

    row = ns.cql.execute("SELECT run_id FROM images WHERE image_id = %s", (image_id,)).one()
    run_row = ns.cql.execute("SELECT stage_records FROM analysis_results WHERE image_id = %s AND run_id = %s",
                             (image_id, row.run_id)).one()
    return Codec().decode(run_row.stage_records["faces"])[1]["faces"]


@pytest.fixture(scope="module")
def analyzed(namespace, models):
    namespace.start_worker()
    a = submit(namespace, "alice", "obama_portrait.jpg", "biden_blue_room.jpg", "road_cars_canberra.jpg",
               "office_kitchen_fruit.jpg", "cat_chelsea.png")
    a.update(submit(namespace, "alice", "obama_podium.jpg"))  # after the portrait: clustering has something to join
    b = submit(namespace, "bob", "obama_podium.jpg")
    return a, b


def test_all_complete(analyzed):
    a, b = analyzed
    assert {r["status"] for r in list(a.values()) + list(b.values())} == {"complete"}


def test_same_person_matches_and_another_does_not(namespace, analyzed):
    a, _ = analyzed
    portrait = faces_of(namespace, a["obama_portrait.jpg"]["image_id"])
    podium = faces_of(namespace, a["obama_podium.jpg"]["image_id"])
    biden = faces_of(namespace, a["biden_blue_room.jpg"]["image_id"])
    assert len(portrait) == len(podium) == len(biden) == 1
    assert podium[0]["person_id"] == portrait[0]["person_id"]
    assert podium[0]["match_distance"] < 0.6
    assert biden[0]["person_id"] != portrait[0]["person_id"]
    assert faces_of(namespace, a["cat_chelsea.png"]["image_id"]) == []


def test_faces_are_never_matched_across_users(namespace, analyzed):
    a, b = analyzed
    alice = faces_of(namespace, a["obama_portrait.jpg"]["image_id"])[0]["person_id"]
    bob = faces_of(namespace, b["obama_podium.jpg"]["image_id"])
    assert len(bob) == 1 and bob[0]["person_id"] != alice and bob[0]["match_distance"] is None


def test_people_become_tags(namespace, analyzed):
    a, _ = analyzed
    person = faces_of(namespace, a["obama_portrait.jpg"]["image_id"])[0]["person_id"]
    rows = list(namespace.cql.execute("SELECT image_id FROM user_images_by_tag WHERE user_id = %s AND tag = %s",
                                      ("alice", person)))
    assert sorted(r.image_id for r in rows) == sorted([a["obama_portrait.jpg"]["image_id"], a["obama_podium.jpg"]["image_id"]])


def test_scene_indoor_and_outdoor(namespace, analyzed):
    a, _ = analyzed
    def env(name):
        tags = {(t.kind, t.tag) for t in namespace.cql.execute("SELECT kind, tag FROM image_tags WHERE image_id = %s",
                                                                (a[name]["image_id"],))}
        return tags
    assert ("scene", "outdoor") in env("road_cars_canberra.jpg")
    assert ("scene", "indoor") in env("office_kitchen_fruit.jpg")


def test_visual_vector_in_cassandra_and_qdrant(namespace, analyzed):
    import math

    from qdrant_client import QdrantClient

    from lensflow.streams.records import point_id

    a, _ = analyzed
    ids = [r["image_id"] for r in a.values()]
    for image_id in ids:
        row = namespace.cql.execute("SELECT visual FROM images WHERE image_id = %s", (image_id,)).one()
        assert row.visual is not None and len(row.visual) == 1280
        assert math.isclose(sum(x * x for x in row.visual), 1.0, rel_tol=1e-3)
    namespace.stop_worker()
    client = QdrantClient(path=str(namespace.data_dir / "qdrant"))
    try:
        points = client.retrieve("images", [point_id(i) for i in ids], with_vectors=True)
        assert all(len(p.vector["visual"]) == 1280 for p in points)
        # the two photos of the same car are nearer to each other than to the kitchen
        faces_count = client.count("faces").count
        assert faces_count == 4  # alice: portrait, biden, podium; bob: podium
    finally:
        client.close()
