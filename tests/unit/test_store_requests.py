"""What the Cassandra sink sends for one image, planned without Cassandra (``plan_write``): how many
requests, which statements in each, and in which order. ``tests/integration/test_sink_requests.py``
counts the same against the real Cassandra; this one runs with the unit tests."""

from datetime import datetime, timezone

from cassandra.query import UNSET_VALUE

from lensflow.streams.store import (BATCH_PARTITIONS, IMAGE_ROW_COLUMNS, StoredImage, f32, plan_write)

TAKEN = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
TAGS = [{"kind": "camera", "tag": "benchcam b-1", "score": 1.0}, {"kind": "year", "tag": "2024", "score": 1.0},
        {"kind": "place", "tag": "paris", "score": 1.0}, {"kind": "place", "tag": "ile-de-france", "score": 1.0},
        {"kind": "place", "tag": "france", "score": 1.0}]


def rows(run="r1", version=1, sha="ab", **extra):
    row = {"image_id": "i", "user_id": "u", "sha256": sha, "taken_at": TAKEN, "run_id": run, "analysis_version": version,
           "caption": None, **extra}
    analysis = {"image_id": "i", "run_id": run, "analysis_version": version, "status": "complete", "result_json": None}
    return row, analysis


def stored_after(row, tags):
    """The StoredImage ``current`` reads back after ``row`` was written with ``tags``."""
    return StoredImage(row["run_id"], row["analysis_version"], row["user_id"], row["run_id"], None, row["sha256"],
                       datetime(2024, 5, 1, 12, 0), {(t["kind"], t["tag"]): f32(t["score"]) for t in tags})


def names(ops):
    return sorted(name for name, _ in ops)


def test_first_write_is_two_requests_for_up_to_eight_tags():
    row, analysis = rows()
    plan = plan_write(row, analysis, TAGS, None)
    assert names(plan.index) == ["insert_by_sha", "insert_by_user"] + ["insert_user_tag"] * 5
    assert names(plan.image) == ["insert_analysis", "insert_image"] + ["insert_tag"] * 5
    assert plan.cleanup == [] and plan.requests() == 2
    # nulls are left unset on a first write, and the row carries its tags
    values = dict(zip(IMAGE_ROW_COLUMNS, dict(plan.image)["insert_image"]))
    assert values["caption"] is UNSET_VALUE and values["tags"] == {(t["kind"], t["tag"]): 1.0 for t in TAGS}
    many = TAGS + [{"kind": "object", "tag": f"o{i}", "score": 0.5} for i in range(BATCH_PARTITIONS)]
    assert plan_write(row, analysis, many, None).requests() == 3  # 17 index partitions: two batches


def test_rewrite_sends_only_what_changed_and_deletes_after_the_row():
    row, analysis = rows()
    stored = stored_after(row, TAGS)
    tags = [t for t in TAGS if t["tag"] != "2024"] + [{"kind": "object", "tag": "bicycle", "score": 0.8}]
    new_row, new_analysis = rows("r2", 2)
    plan = plan_write(new_row, new_analysis, tags, stored)
    assert plan.index == [("insert_user_tag", ("u", "bicycle", "i", "object", f32(0.8), TAKEN)), ("insert_by_user", ("u", "i", "r2", 2))]
    assert names(plan.image) == ["delete_tag", "insert_analysis", "insert_image", "insert_tag"]
    assert plan.cleanup == [("delete_user_tag", ("u", "2024", "i"))]
    assert plan.requests() == 3
    # the row's nulls clear an earlier run's values; the new run's analysis row is a first write of that row
    values = dict(zip(IMAGE_ROW_COLUMNS, dict(plan.image)["insert_image"]))
    assert values["caption"] is None and UNSET_VALUE not in values.values()
    assert UNSET_VALUE in dict(plan.image)["insert_analysis"]


def test_replay_of_a_stored_run_writes_the_image_partition_only():
    row, analysis = rows()
    plan = plan_write(row, analysis, TAGS, stored_after(row, TAGS))
    assert plan.index == [] and plan.cleanup == [] and names(plan.image) == ["insert_analysis", "insert_image"]
    assert plan.requests() == 1
    assert UNSET_VALUE not in dict(plan.image)["insert_analysis"]  # the same run: its nulls clear what an attempt wrote


def test_what_the_index_entries_carry_is_compared_too():
    row, analysis = rows()
    stored = stored_after(row, TAGS)
    moved = dict(row, taken_at=datetime(2023, 1, 1, tzinfo=timezone.utc))  # another capture time: every entry again
    assert names(plan_write(moved, analysis, TAGS, stored).index) == ["insert_user_tag"] * 5
    rehashed, _ = rows(sha="cd")  # other bytes: the new SHA-256's entry, and the old one's removed after the row
    plan = plan_write(rehashed, analysis, TAGS, stored)
    assert plan.index == [("insert_by_sha", ("u", "cd", "i"))] and plan.cleanup == [("delete_by_sha", ("u", "ab", "i"))]


def test_a_row_from_before_the_tags_column_trusts_no_index_entry():
    row, analysis = rows()
    legacy = stored_after(row, TAGS)._replace(tags=None)
    plan = plan_write(row, analysis, TAGS[:2], legacy, old_tags={(t["kind"], t["tag"]): 1.0 for t in TAGS})
    assert names(plan.index) == ["insert_by_sha", "insert_by_user", "insert_user_tag", "insert_user_tag"]
    assert names(plan.image) == ["delete_tag"] * 3 + ["insert_analysis", "insert_image"]
    assert names(plan.cleanup) == ["delete_user_tag"] * 3


def test_a_tag_of_two_kinds_is_one_index_entry():
    row, analysis = rows()
    tags = [{"kind": "place", "tag": "paris", "score": 0.5}, {"kind": "keyword", "tag": "paris", "score": 0.9}]
    plan = plan_write(row, analysis, tags, None)
    assert [v for name, v in plan.index if name == "insert_user_tag"] == [("u", "paris", "i", "keyword", f32(0.9), TAKEN)]
    assert names(plan.image).count("insert_tag") == 2


def test_local_qdrant_commits_without_an_fsync_per_point_and_keeps_them(tmp_path):
    """Local mode's SQLite files go to WAL with synchronous=NORMAL (an fsync per point was ~1 ms of the
    join's time each); the points are still there when the store is opened again."""
    import asyncio
    import uuid

    from lensflow.streams.store import QdrantStore

    store = QdrantStore(None, tmp_path / "qdrant")
    modes = store.run(lambda c: [(coll.storage.storage.execute("PRAGMA journal_mode").fetchone()[0],
                                  coll.storage.storage.execute("PRAGMA synchronous").fetchone()[0])
                                 for coll in c._client.collections.values()])
    assert modes and all(m == ("wal", 1) for m in modes), modes  # synchronous 1 = NORMAL
    ids = [str(uuid.uuid4()) for _ in range(20)]
    asyncio.run(store.upsert_images([{"id": i, "vectors": {}, "payload": {"image_id": i, "user_id": "u"}} for i in ids]))
    store.close()
    again = QdrantStore(None, tmp_path / "qdrant")
    try:
        assert again.run(lambda c: c.count("images").count) == 20
    finally:
        again.close()
