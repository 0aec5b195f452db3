"""The spine end to end on the real stack: upload events → preprocess + EXIF → join → Cassandra +
Qdrant + images.analyzed + cache.invalidations, checked from outside lensflow's code paths."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from lensflow.streams.records import point_id
from tests.conftest import PHOTOS

from .helpers import read_topic, wait_for

pytestmark = pytest.mark.integration

EXPECTED = json.loads((PHOTOS / "expected_exif.json").read_text())
FILES = sorted(p for p in PHOTOS.iterdir() if p.name in EXPECTED)


@pytest.fixture(scope="module")
def analyzed(namespace):
    namespace.start_worker()
    proc = namespace.cli("submit", "--user", "u1", "--wait", "--json", "--timeout", "180", *map(str, FILES))
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {line["file"].rsplit("/", 1)[-1]: line for line in lines}


def test_every_photo_is_analyzed_complete(analyzed):
    assert len(FILES) >= 12
    assert sorted(analyzed) == sorted(p.name for p in FILES)
    assert {r["status"] for r in analyzed.values()} == {"complete"}, analyzed


def test_exactly_one_row_per_image_in_cassandra(namespace, analyzed):
    ids = {r["image_id"] for r in analyzed.values()}
    rows = list(namespace.cql.execute("SELECT image_id, status, analysis_version FROM images"))
    assert sorted(r.image_id for r in rows) == sorted(ids)
    assert {r.analysis_version for r in rows} == {1}
    runs = list(namespace.cql.execute("SELECT image_id, run_id FROM analysis_results"))
    assert sorted(r.image_id for r in runs) == sorted(ids)


def test_exactly_one_analyzed_event_and_invalidation_per_image(namespace, analyzed):
    ids = sorted(r["image_id"] for r in analyzed.values())
    events = read_topic(namespace.topic("images.analyzed"))
    assert sorted(rec["image_id"] for _, rec in events) == ids
    assert all(key.decode() == rec["image_id"] for key, rec in events)
    assert {rec["status"] for _, rec in events} == {"complete"}
    for _, rec in events:
        assert [s["stage"] for s in rec["stages"]] == ["preprocess", "metadata"]
    invalidations = read_topic(namespace.topic("cache.invalidations"))
    assert sorted(rec["image_id"] for _, rec in invalidations) == ids
    assert all(f"image:{rec['image_id']}" in rec["keys"] for _, rec in invalidations)


#: what exiftool reads from the XMP of the files whose camera is in XMP only
XMP_CAMERA = {"cat_chelsea.png": ("PENTAX Corporation", "PENTAX K100D Super")}


@pytest.mark.parametrize("name", [p.name for p in FILES])
def test_stored_exif_equals_the_file(namespace, analyzed, name):
    exp = EXPECTED[name]
    row = namespace.cql.execute("SELECT * FROM images WHERE image_id = %s", (analyzed[name]["image_id"],)).one()
    # EXIF's Make/Model (exiftool's values), else the XMP's tiff:Make/tiff:Model (cat_chelsea.png has XMP only)
    xmp = XMP_CAMERA.get(name, (None, None))
    assert row.camera_make == (exp["Make"].strip() if "Make" in exp else xmp[0])
    assert row.camera_model == (exp["Model"].strip() if "Model" in exp else xmp[1])
    if "DateTimeOriginal" in exp:
        wall = datetime.strptime(exp["DateTimeOriginal"][:19], "%Y:%m:%d %H:%M:%S")
        assert row.taken_at_local[:19] == wall.isoformat()
        assert row.tz_offset == exp.get("OffsetTimeOriginal")
    else:
        assert row.taken_at is None
    if "GPSLatitude" in exp:
        assert row.gps_lat == pytest.approx(exp["GPSLatitude"], abs=1e-6)
        assert row.gps_lon == pytest.approx(exp["GPSLongitude"], abs=1e-6)
        assert row.place_country_code and row.place_city  # reverse-geocoded offline
    else:
        assert row.gps_lat is None and row.gps_lon is None and row.place_city is None
    orientation = exp.get("Orientation", 1)
    assert row.orientation == orientation
    w, h = exp["ImageWidth"], exp["ImageHeight"]
    assert (row.original_width, row.original_height) == ((h, w) if orientation in (5, 6, 7, 8) else (w, h))
    assert max(row.width, row.height) <= 1600


def test_show_json_shows_exif_and_status(namespace, analyzed):
    image_id = analyzed["bicycle_street_orientation6.jpg"]["image_id"]
    shown = json.loads(namespace.cli("show", image_id, "--json").stdout)
    assert shown["status"] == "complete"
    assert shown["camera_model"] == "iPhone XS" and shown["tz_offset"] == "+03:00"
    assert shown["gps_lat"] == pytest.approx(55.7313528, abs=1e-6)
    assert shown["stages"]["metadata"]["status"] == "ok"
    assert {"kind": "camera", "tag": "apple iphone xs", "score": 1.0} in shown["tags"]
    # its GPS position, reverse-geocoded offline (GeoNames): a district of Moscow, Russia
    assert shown["place_country_code"] == "RU" and shown["place_region"] == "Moscow"
    assert {"kind": "place", "tag": "russian federation", "score": 1.0} in shown["tags"]
    assert shown["analysis"]["metadata"]["place"]["country"] == "Russian Federation"


def test_resubmitting_the_same_photo_keeps_one_row_and_bumps_the_version(namespace, analyzed):
    name = "road_cars_canberra.jpg"
    proc = namespace.cli("submit", "--user", "u1", "--wait", "--json", str(PHOTOS / name))
    again = json.loads(proc.stdout.splitlines()[-1])
    assert again["image_id"] == analyzed[name]["image_id"] and again["analysis_version"] == 2
    rows = list(namespace.cql.execute("SELECT image_id FROM images WHERE image_id = %s", (again["image_id"],)))
    runs = list(namespace.cql.execute("SELECT run_id FROM analysis_results WHERE image_id = %s", (again["image_id"],)))
    assert len(rows) == 1 and len(runs) == 2  # one image, two analysis runs


def test_a_late_result_is_merged_into_the_stored_image(namespace, analyzed):
    """A stage result that arrives after its image completed updates the stored aggregate."""
    from confluent_kafka import Producer

    from lensflow.streams.codec import Codec
    from lensflow.streams.records import now

    image_id = analyzed["car_audi_roadside.jpg"]["image_id"]
    row = namespace.cql.execute("SELECT run_id, analysis_version FROM images WHERE image_id = %s", (image_id,)).one()
    late = {"image_id": image_id, "user_id": "u1", "run_id": row.run_id, "stage": "metadata",
            "model": {"name": "pillow-exif", "version": "2", "sha256": None}, "status": "ok", "error": None,
            "duration_ms": 1.0, "produced_at": now(), "camera_make": "LateCam", "camera_model": "X1",
            "width": 180, "height": 135, "orientation": 1, "warnings": []}
    producer = Producer({"bootstrap.servers": "127.0.0.1:9092", "partitioner": "murmur2_random"})
    producer.produce(namespace.topic("analysis.metadata"), key=image_id.encode(), value=Codec().encode("MetadataResult", late))
    assert producer.flush(10) == 0

    def merged():
        r = namespace.cql.execute("SELECT camera_make, analysis_version FROM images WHERE image_id = %s", (image_id,)).one()
        return r if r.camera_make == "LateCam" else None

    r = wait_for(merged, 60, message="the late metadata to be merged")
    assert r.analysis_version == row.analysis_version + 1
    runs = list(namespace.cql.execute("SELECT run_id FROM analysis_results WHERE image_id = %s", (image_id,)))
    assert len(runs) == 1  # merged into the same run, not a new one


def test_qdrant_has_one_point_per_image(namespace, analyzed):
    """Qdrant local mode is owned by the worker process: stop it, then open the folder."""
    from qdrant_client import QdrantClient

    namespace.stop_worker()
    client = QdrantClient(path=str(namespace.data_dir / "qdrant"))
    try:
        ids = {r["image_id"] for r in analyzed.values()}
        assert client.count("images").count == len(ids)
        points = client.retrieve("images", [point_id(i) for i in ids], with_payload=True)
        assert {p.payload["image_id"] for p in points} == ids
        assert {p.payload["user_id"] for p in points} == {"u1"}
    finally:
        client.close()
