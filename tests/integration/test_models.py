"""Model stages on the real stack: faces matched per user in Qdrant, scene, and the visual vector
stored in Cassandra and Qdrant. Semantics, not shapes."""

from __future__ import annotations

import json

import pytest

from lensflow.agents.face_models import SFaceModel
from lensflow.streams.faces_store import MATCH_THRESHOLDS
from tests.conftest import PHOTOS

from .conftest import run

pytestmark = pytest.mark.integration

STAGES = "objects,text,faces,scene,embedding,describe,safety"
#: the default faces model's match threshold (SFace: L2 1.128 on unit vectors)
THRESHOLD = MATCH_THRESHOLDS[SFaceModel.name]


def submit(ns, user, *names):
    proc = ns.cli("submit", "--user", user, "--wait", "--json", "--stages", STAGES, "--timeout", "180",
                  *(str(PHOTOS / n) for n in names))
    return {json.loads(line)["file"].rsplit("/", 1)[-1]: json.loads(line) for line in proc.stdout.splitlines()
            if line.startswith("{")}


def stage_result(ns, image_id, stage):
    from lensflow.streams.codec import Codec

    row = ns.cql.execute("SELECT run_id FROM images WHERE image_id = %s", (image_id,)).one()
    run_row = ns.cql.execute("SELECT stage_records FROM analysis_results WHERE image_id = %s AND run_id = %s",
                             (image_id, row.run_id)).one()
    return Codec().decode(run_row.stage_records[stage])[1]


def faces_of(ns, image_id):
    return stage_result(ns, image_id, "faces")["faces"]


@pytest.fixture(scope="module")
def analyzed(namespace, models):
    namespace.start_worker()
    # bob enrolls Obama before his photo arrives; alice enrolls no one
    namespace.cli("faces", "enroll", "--user", "bob", "--name", "Barack Obama", str(PHOTOS / "obama_portrait.jpg"))
    a = submit(namespace, "alice", "obama_portrait.jpg", "biden_blue_room.jpg", "road_cars_canberra.jpg",
               "office_kitchen_fruit.jpg", "cat_chelsea.png", "printed_page_text.png")
    a.update(submit(namespace, "alice", "obama_podium.jpg"))  # after the portrait: clustering has something to join
    b = submit(namespace, "bob", "obama_podium.jpg")
    return a, b


def test_all_complete(analyzed):
    a, b = analyzed
    assert {r["status"] for r in list(a.values()) + list(b.values())} == {"complete"}


def test_metrics_show_cpu_per_stage_and_one_decode_per_image(namespace, analyzed):
    import httpx

    from lensflow.streams.observability import counter_values

    text = httpx.get(f"http://127.0.0.1:{namespace.env['LENSFLOW_WEB_PORT']}/metrics", timeout=10).text

    def counter(name, label):
        return counter_values(text, f"lensflow_{name}").get(label, 0.0)

    for stage in ("preprocess", "objects", "visual", "text", "faces", "describe"):
        assert counter("stage_cpu_seconds", stage) > 0, stage
    # the pixel models together cost more CPU than the describe stage's text embedding (one model
    # alone is not a safe bet: on 8 images describe's first-run cost of each new text length can
    # outweigh the objects stage, 0.39 s against 0.34 s in one CI run)
    models = sum(counter("stage_cpu_seconds", s) for s in ("objects", "visual", "text", "faces", "safety"))
    assert models > counter("stage_cpu_seconds", "describe")
    # each stage's CPU is read in its own thread, so together they are never more than the process's
    from prometheus_client.parser import text_string_to_metric_families
    process = next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "process_cpu_seconds_total")
    stages = counter_values(text, "lensflow_stage_cpu_seconds")
    assert 0 < sum(stages.values()) <= process, (stages, process)
    a, b = analyzed
    images = len(a) + len(b)
    # 5 pixel agents (objects, visual, text, faces, safety) read every image: one decodes it, four share it
    # (enrolment decodes are not counted here)
    assert counter("decoded_cache", "miss") == images
    assert counter("decoded_cache", "hit") == 4 * images


def test_objects_are_found_where_they_are(namespace, analyzed):
    a, _ = analyzed
    def labels(name):
        res = stage_result(namespace, a[name]["image_id"], "objects")
        assert res["status"] == "ok"
        return [d["label"] for d in res["detections"]]
    assert labels("road_cars_canberra.jpg").count("car") >= 2
    assert "person" in labels("obama_portrait.jpg")
    assert "cat" in labels("cat_chelsea.png") and "person" not in labels("cat_chelsea.png")
    # boxes are in original-image pixels
    res = stage_result(namespace, a["road_cars_canberra.jpg"]["image_id"], "objects")
    assert all(0 <= d["box"]["x1"] < d["box"]["x2"] <= 800 and 0 <= d["box"]["y1"] < d["box"]["y2"] <= 600
               for d in res["detections"])


def test_printed_words_are_read_back(namespace, analyzed):
    a, _ = analyzed
    page = stage_result(namespace, a["printed_page_text.png"]["image_id"], "text")
    assert "Region-based segmentation" in page["text"]
    assert page["language"] == "en"
    cat = stage_result(namespace, a["cat_chelsea.png"]["image_id"], "text")
    assert cat["text"] == ""


def test_same_person_matches_and_another_does_not(namespace, analyzed):
    a, _ = analyzed
    portrait = faces_of(namespace, a["obama_portrait.jpg"]["image_id"])
    podium = faces_of(namespace, a["obama_podium.jpg"]["image_id"])
    biden = faces_of(namespace, a["biden_blue_room.jpg"]["image_id"])
    assert len(portrait) == len(podium) == len(biden) == 1
    assert podium[0]["person_id"] == portrait[0]["person_id"]
    assert podium[0]["match_distance"] < THRESHOLD
    assert biden[0]["person_id"] != portrait[0]["person_id"]
    assert faces_of(namespace, a["cat_chelsea.png"]["image_id"]) == []


def test_enrolled_person_is_recognised_for_that_user_only(namespace, analyzed):
    a, b = analyzed
    alice = faces_of(namespace, a["obama_portrait.jpg"]["image_id"])[0]
    bob = faces_of(namespace, b["obama_podium.jpg"]["image_id"])
    assert len(bob) == 1 and bob[0]["person_name"] == "Barack Obama" and bob[0]["match_distance"] < THRESHOLD
    assert bob[0]["person_id"] != alice["person_id"]
    assert alice["person_name"] is None  # bob's enrollment never names alice's faces
    shown = json.loads(namespace.cli("show", b["obama_podium.jpg"]["image_id"], "--json").stdout)
    assert {"kind": "person", "tag": "barack obama", "score": 1.0} in shown["tags"]


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


def search(ns, *args):
    return json.loads(ns.cli("search", "--json", *args).stdout)


def test_caption_is_grounded(namespace, analyzed):
    a, _ = analyzed
    row = namespace.cql.execute("SELECT caption FROM images WHERE image_id = %s", (a["biden_blue_room.jpg"]["image_id"],)).one()
    assert row.caption and "person" in row.caption.lower()


def test_text_search_ranks_the_right_photo_first(namespace, analyzed):
    a, _ = analyzed
    hits = search(namespace, "--user", "alice", "--text", "a cat")
    assert hits[0]["image_id"] == a["cat_chelsea.png"]["image_id"]


def test_like_finds_the_same_person_first(namespace, analyzed):
    a, _ = analyzed
    hits = search(namespace, "--user", "alice", "--like", a["obama_portrait.jpg"]["image_id"])
    assert hits[0]["image_id"] == a["obama_podium.jpg"]["image_id"]
    assert a["obama_portrait.jpg"]["image_id"] not in [h["image_id"] for h in hits]


def test_like_returns_a_resized_reencoded_copy_first(namespace, analyzed, tmp_path):
    from PIL import Image

    a, _ = analyzed
    img = Image.open(PHOTOS / "office_kitchen_fruit.jpg")
    img = img.resize((img.width * 3 // 5, img.height * 3 // 5))
    copy = tmp_path / "kitchen_copy.jpg"
    img.save(copy, "JPEG", quality=70, exif=Image.open(PHOTOS / "office_kitchen_fruit.jpg").info.get("exif", b""))
    proc = namespace.cli("submit", "--user", "alice", "--wait", "--json", "--stages", STAGES, str(copy))
    copy_id = json.loads(proc.stdout.splitlines()[-1])["image_id"]
    hits = search(namespace, "--user", "alice", "--like", a["office_kitchen_fruit.jpg"]["image_id"])
    assert hits[0]["image_id"] == copy_id and hits[0]["score"] > 0.9


def test_search_never_returns_another_users_images(namespace, analyzed):
    a, b = analyzed
    for args in (["--text", "a man in a suit"], ["--tag", "2009"], ["--person", "Barack Obama"]):
        hits = search(namespace, "--user", "alice", *args)
        assert b["obama_podium.jpg"]["image_id"] not in [h["image_id"] for h in hits]
    bob_hits = search(namespace, "--user", "bob", "--person", "Barack Obama")
    assert [h["image_id"] for h in bob_hits] == [b["obama_podium.jpg"]["image_id"]]


def test_naming_a_clustered_person_makes_them_searchable(namespace, analyzed):
    a, _ = analyzed
    person = faces_of(namespace, a["obama_portrait.jpg"]["image_id"])[0]["person_id"]
    namespace.cli("faces", "name", "--user", "alice", person, "The President")
    hits = search(namespace, "--user", "alice", "--person", "The President")
    assert sorted(h["image_id"] for h in hits) == sorted([a["obama_portrait.jpg"]["image_id"], a["obama_podium.jpg"]["image_id"]])


def test_tag_and_time_filters(namespace, analyzed):
    a, _ = analyzed
    hits = search(namespace, "--user", "alice", "--tag", "2012")
    assert [h["image_id"] for h in hits] == [a["obama_portrait.jpg"]["image_id"]]
    later = search(namespace, "--user", "alice", "--tag", "2012", "--taken-after", "2013-01-01")
    assert later == []
    near = search(namespace, "--user", "alice", "--text", "photo", "--near", "-35.3,149.1,50")
    assert [h["image_id"] for h in near] == [a["road_cars_canberra.jpg"]["image_id"]]


def test_reanalyze_one_stage_merges_without_touching_the_others(namespace, analyzed):
    a, b = analyzed
    alice_ids = [r.image_id for r in namespace.cql.execute("SELECT image_id, user_id FROM images") if r.user_id == "alice"]
    before = {i: namespace.cql.execute(
        "SELECT analysis_version, last_analyzed, caption FROM images WHERE image_id = %s", (i,)).one() for i in alice_ids}
    faces_before = faces_of(namespace, a["obama_portrait.jpg"]["image_id"])
    proc = namespace.cli("reanalyze", "--stage", "scene", "--user", "alice", "--wait", "--timeout", "180")
    assert proc.stdout.count("complete") == len(alice_ids)
    for image_id, old in before.items():
        new = namespace.cql.execute("SELECT analysis_version, last_analyzed, caption, run_id FROM images WHERE image_id = %s",
                                    (image_id,)).one()
        assert new.analysis_version == old.analysis_version + 1 and new.last_analyzed > old.last_analyzed
        assert new.caption == old.caption and new.run_id.startswith("reanalyze-")
        assert stage_result(namespace, image_id, "scene")["run_id"] == new.run_id  # the new scene result
    assert faces_of(namespace, a["obama_portrait.jpg"]["image_id"]) == faces_before  # untouched
    bob = namespace.cql.execute("SELECT analysis_version FROM images WHERE image_id = %s",
                                (b["obama_podium.jpg"]["image_id"],)).one()
    assert bob.analysis_version == 1  # another user's images are not re-analysed
    from .helpers import read_topic
    reasons = [rec["reason"] for _, rec in read_topic(namespace.topic("cache.invalidations"))]
    assert reasons.count("reanalyzed") == len(alice_ids)


def test_show_prints_the_whole_analysis_and_renders_its_boxes(namespace, analyzed, tmp_path):
    from PIL import Image, ImageChops

    a, b = analyzed
    road = json.loads(namespace.cli("show", a["road_cars_canberra.jpg"]["image_id"], "--json").stdout)
    cars = [o for o in road["analysis"]["objects"] if o["label"] == "car"]
    assert len(cars) >= 2 and all(o["box"]["x2"] > o["box"]["x1"] for o in cars)
    assert road["analysis"]["scene"]["environment"]["label"] == "outdoor" and road["analysis"]["scene"]["classes"]
    assert road["analysis"]["caption"]
    assert road["aggregate"]["results"]["embedding"]["vector_dim"] == 1280  # vectors elided, not printed
    assert "vector" not in road["aggregate"]["results"]["embedding"]
    page = json.loads(namespace.cli("show", a["printed_page_text.png"]["image_id"], "--json").stdout)
    assert any("Region-based segmentation" in ln["text"] for ln in page["analysis"]["text"]["lines"])
    podium = json.loads(namespace.cli("show", b["obama_podium.jpg"]["image_id"], "--json").stdout)
    assert [f["person_name"] for f in podium["analysis"]["faces"]] == ["Barack Obama"]
    human = namespace.cli("show", a["printed_page_text.png"]["image_id"]).stdout
    assert "Region-based segmentation" in human and "caption" in human
    out = tmp_path / "podium.png"
    namespace.cli("show", b["obama_podium.jpg"]["image_id"], "--render", str(out))
    drawn = Image.open(out).convert("RGB")
    original = Image.open(podium["uri"].removeprefix("file://")).convert("RGB")
    assert drawn.size == original.size
    face = podium["analysis"]["faces"][0]["box"]
    scale = original.width / podium["original_width"]
    x1, y1 = int(face["x1"] * scale), int(face["y1"] * scale)
    # the face's box outline is drawn where the face is; outlines and labels, not a repainted picture
    assert ImageChops.difference(drawn.crop((x1 - 2, y1 - 2, x1 + 3, y1 + 3)), original.crop((x1 - 2, y1 - 2, x1 + 3, y1 + 3))).getbbox()
    diff = ImageChops.difference(drawn, original).convert("L").point(lambda v: 255 if v > 40 else 0)
    changed = sum(diff.histogram()[255:]) / (drawn.width * drawn.height)
    assert 0.001 < changed < 0.3, changed


def test_every_sample_is_scored_safe_and_search_safe_leaves_out_the_unscored(namespace, analyzed):
    a, _ = analyzed
    for name, r in a.items():
        res = stage_result(namespace, r["image_id"], "safety")
        assert res["status"] == "ok" and 0.0 <= res["nsfw_score"] < 0.2 and res["unsafe"] is False, (name, res)
    shown = json.loads(namespace.cli("show", a["cat_chelsea.png"]["image_id"], "--json").stdout)
    assert shown["analysis"]["safety"]["unsafe"] is False and shown["nsfw_score"] < 0.2
    plain = search(namespace, "--user", "alice", "--text", "a cat")
    safe = search(namespace, "--user", "alice", "--text", "a cat", "--safe")
    assert safe[0]["image_id"] == a["cat_chelsea.png"]["image_id"] and len(safe) == len(plain)
    # an image the safety stage never scored is not known to be safe
    unscored = namespace.cli("submit", "--user", "carol", "--wait", "--json", "--stages", "objects",
                             str(PHOTOS / "road_cars_canberra.jpg"))
    carol = json.loads(unscored.stdout.splitlines()[-1])["image_id"]
    assert [h["image_id"] for h in search(namespace, "--user", "carol", "--tag", "car")] == [carol]
    assert search(namespace, "--user", "carol", "--tag", "car", "--safe") == []


@pytest.fixture(scope="module")
def concepts(namespace, analyzed):
    return submit(namespace, "dora", "rocket_launch_falcon9.jpg", "cameraman_tripod.png", "coffee_espresso.png",
                  "astronaut_collins.png", "road_cars_canberra.jpg")


def test_captions_name_what_the_scene_classes_saw(namespace, concepts):
    def caption(name):
        return namespace.cql.execute("SELECT caption FROM images WHERE image_id = %s", (concepts[name]["image_id"],)).one().caption
    assert "a rocket" in caption("rocket_launch_falcon9.jpg").lower()
    assert "camera on a tripod" in caption("cameraman_tripod.png")
    assert "espresso" in caption("coffee_espresso.png")
    assert "snow" not in caption("astronaut_collins.png")  # 0.10 of snow is not enough to say so
    tags = {(t.kind, t.tag) for t in namespace.cql.execute("SELECT kind, tag FROM image_tags WHERE image_id = %s",
                                                             (concepts["rocket_launch_falcon9.jpg"]["image_id"],))}
    assert ("concept", "rocket") in tags


def test_one_word_queries_find_the_concept(namespace, concepts):
    for word, name in (("rocket", "rocket_launch_falcon9.jpg"), ("camera", "cameraman_tripod.png"),
                       ("espresso", "coffee_espresso.png")):
        hits = search(namespace, "--user", "dora", "--text", word)
        assert hits[0]["image_id"] == concepts[name]["image_id"], (word, hits)


def test_a_printed_word_finds_its_page(namespace, analyzed):
    a, _ = analyzed
    hits = search(namespace, "--user", "alice", "--text", "histogram")  # a word of the page's body text
    assert hits[0]["image_id"] == a["printed_page_text.png"]["image_id"] and hits[0]["keyword_matches"] == 1



def test_exact_and_near_duplicates_are_flagged_and_searchable(namespace, analyzed, tmp_path):
    import shutil

    from PIL import Image

    area = namespace.data_dir / "storage" / "uploads" / "erin"
    area.mkdir(parents=True, exist_ok=True)
    for name in ("first.jpg", "second.jpg"):  # the same bytes under two URIs: two images, one original
        shutil.copyfile(PHOTOS / "road_cars_canberra.jpg", area / name)
    img = Image.open(PHOTOS / "road_cars_canberra.jpg")
    img.resize((img.width * 3 // 5, img.height * 3 // 5)).save(area / "smaller.jpg", "JPEG", quality=70)
    ids = {}
    for name in ("first.jpg", "second.jpg", "smaller.jpg"):  # one after the other: each sees the ones before
        proc = namespace.cli("submit", "--user", "erin", "--wait", "--json", "--stages", "embedding", f"file://{area / name}")
        ids[name] = json.loads(proc.stdout.splitlines()[-1])["image_id"]
    row = lambda n: namespace.cql.execute("SELECT duplicate_of, near_duplicates FROM images WHERE image_id = %s", (ids[n],)).one()  # noqa: E731
    assert row("first.jpg").duplicate_of is None and row("first.jpg").near_duplicates is None
    assert row("second.jpg").duplicate_of == [ids["first.jpg"]]
    assert set(row("smaller.jpg").near_duplicates) == {ids["first.jpg"], ids["second.jpg"]}
    assert [h["image_id"] for h in search(namespace, "--user", "erin", "--tag", "duplicate")] == [ids["second.jpg"]]
    assert [h["image_id"] for h in search(namespace, "--user", "erin", "--tag", "near-duplicate")] == [ids["smaller.jpg"]]


def test_enrolling_after_the_photos_makes_them_searchable_by_name(namespace, analyzed):
    earlier = submit(namespace, "fay", "obama_portrait.jpg", "biden_blue_room.jpg")
    namespace.cli("faces", "enroll", "--user", "fay", "--name", "Barack Obama", str(PHOTOS / "obama_podium.jpg"))
    hits = search(namespace, "--user", "fay", "--person", "Barack Obama")
    assert [h["image_id"] for h in hits] == [earlier["obama_portrait.jpg"]["image_id"]]

# stops the worker: keep it last
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
        from qdrant_client import models as m

        theirs = m.Filter(should=[m.FieldCondition(key="user_id", match=m.MatchValue(value=u)) for u in ("alice", "bob")])
        faces_count = client.count("faces", count_filter=theirs, exact=True).count
        assert faces_count == 5  # alice: portrait, biden, podium; bob: the enrolled reference + podium
    finally:
        client.close()
