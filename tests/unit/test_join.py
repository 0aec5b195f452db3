"""The join's completion rules, as pure functions: N stages, duplicates, late results, timeouts."""

from datetime import datetime, timezone


from lensflow.agents.join_projection import assemble, tags_of
from lensflow.agents.join_state import decide, merge, stage_of
from lensflow.streams.codec import Codec

T0 = 1_700_000_000_000
TIMEOUT = 10_000
codec = Codec()


def at(offset_ms):
    return datetime.fromtimestamp((T0 + offset_ms) / 1000, timezone.utc)


def prepared(run="r1", expected=("metadata",), derived=(), status="ok", produced=0):
    rec = {"image_id": "img", "user_id": "u", "run_id": run, "stage": "preprocess", "model": None, "status": status,
           "error": None if status == "ok" else {"code": "not_an_image", "message": "no", "retryable": False, "attempts": 1},
           "duration_ms": 3.0, "produced_at": at(produced), "source_uri": "file:///x", "uri": "file:///x" if status == "ok" else None,
           "format": "JPEG", "mime_type": "image/jpeg", "size_bytes": 10, "sha256": "ab", "original_width": 4,
           "original_height": 3, "width": 4, "height": 3, "orientation": 1, "derivative_sha256": "ab",
           "derivative_size_bytes": 10, "expected_stages": list(expected), "derived_stages": list(derived),
           "uploaded_at": at(-1000)}
    return rec


def md(run="r1", produced=0, status="ok", make="Canon"):
    return {"image_id": "img", "user_id": "u", "run_id": run, "stage": "metadata", "model": {"name": "m", "version": "1", "sha256": None},
            "status": status, "error": None, "duration_ms": 1.0, "produced_at": at(produced), "camera_make": make,
            "camera_model": "EOS", "taken_at": datetime(2020, 5, 1, tzinfo=timezone.utc), "width": 4, "height": 3,
            "orientation": 1, "warnings": []}


def objects(run="r1", produced=0):
    return {"image_id": "img", "user_id": "u", "run_id": run, "stage": "objects", "model": None, "status": "ok", "error": None,
            "duration_ms": 20.0, "produced_at": at(produced),
            "detections": [{"label": "Dog", "class_id": 16, "confidence": 0.9, "box": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}]}


def feed(entry, name, rec, now=0):
    raw = codec.encode(name, rec)
    return merge(entry, stage_of(f"lensflow.v1.{name}"), raw, rec, T0 + now, TIMEOUT)


def test_waits_for_prepared_and_every_expected_stage_in_any_order():
    e, _ = feed(None, "MetadataResult", md())
    assert decide(e, T0).action == "wait"  # no prepared yet
    e, _ = feed(e, "ImagePrepared", prepared(expected=["metadata", "objects"]))
    d = decide(e, T0)
    assert d.action == "wait" and d.missing == ["objects"]
    e, _ = feed(e, "ObjectsResult", objects())
    assert decide(e, T0).action == "complete"


def test_duplicates_change_nothing():
    e, changed = feed(None, "ImagePrepared", prepared())
    assert changed
    e2, changed = feed(e, "ImagePrepared", prepared())
    assert not changed and e2 == e
    e3, _ = feed(e, "MetadataResult", md(produced=5))
    e4, changed = feed(e3, "MetadataResult", md(produced=5))
    assert not changed
    e5, changed = feed(e3, "MetadataResult", md(produced=1))  # older re-delivery
    assert not changed


def test_newer_result_of_the_same_stage_wins():
    e, _ = feed(None, "ImagePrepared", prepared(expected=["metadata", "objects"]))
    e, _ = feed(e, "MetadataResult", md(produced=1, make="Old"))
    e, changed = feed(e, "MetadataResult", md(produced=2, make="New"))
    assert changed
    assert codec.decode(__import__("base64").b64decode(e["results"]["metadata"]["b64"]))[1]["camera_make"] == "New"


def test_results_of_another_run_are_ignored_and_a_new_run_drops_old_results():
    e, _ = feed(None, "ImagePrepared", prepared(run="r1", expected=["metadata", "objects"]))
    e, changed = feed(e, "MetadataResult", md(run="r0"))
    assert "metadata" not in e["results"] and "metadata" in e["others"]["r0"]  # kept aside, not r1's
    assert decide(e, T0).missing == ["metadata", "objects"]
    e, _ = feed(e, "MetadataResult", md(run="r1"))
    e, _ = feed(e, "ImagePrepared", prepared(run="r2", expected=["metadata", "objects"], produced=50))
    assert e["run_id"] == "r2" and e["results"] == {}


def test_timeout_completes_as_partial_with_missing_stages_named():
    e, _ = feed(None, "ImagePrepared", prepared(expected=["metadata", "objects"]))
    e, _ = feed(e, "MetadataResult", md())
    assert decide(e, T0 + TIMEOUT - 1).action == "wait"
    d = decide(e, T0 + TIMEOUT)
    assert d.action == "complete" and d.missing == ["objects"]
    recs = {"metadata": md()}
    c = assemble(prepared(expected=["metadata", "objects"]), recs, {}, ["metadata", "objects"], 1)
    assert c.status == "partial"
    missing = [s for s in c.analyzed["stages"] if s["stage"] == "objects"][0]
    assert missing["status"] == "failed" and missing["error"]["code"] == "timeout"


def test_failed_preprocess_completes_as_failed_once_metadata_is_in():
    e, _ = feed(None, "ImagePrepared", prepared(status="failed", expected=["metadata"]))
    assert decide(e, T0).action == "wait"
    e, _ = feed(e, "MetadataResult", md(status="failed"))
    assert decide(e, T0).action == "complete"
    c = assemble(prepared(status="failed"), {"metadata": md(status="failed")}, {}, ["metadata"], 1)
    assert c.status == "failed" and c.image_row["error_code"] == "not_an_image"
    assert c.analyzed["error"]["code"] == "not_an_image"


def test_derived_stages_get_a_phase_of_their_own():
    e, _ = feed(None, "ImagePrepared", prepared(expected=["metadata"], derived=["describe"]))
    e, _ = feed(e, "MetadataResult", md())
    assert decide(e, T0).action == "aggregate"
    e["aggregated"] = True
    assert decide(e, T0).action == "wait"
    e["results"]["describe"] = {"run_id": "r1", "at": T0, "b64": ""}
    assert decide(e, T0).action == "complete"


def test_results_without_prepared_past_the_deadline_are_late():
    e, _ = feed(None, "MetadataResult", md())
    assert decide(e, T0 + TIMEOUT).action == "unprepared"


def test_assemble_builds_rows_tags_point_and_events():
    recs = {"metadata": md(), "objects": objects()}
    c = assemble(prepared(expected=["metadata", "objects"]), recs, {"metadata": b"x"}, ["metadata", "objects"], 3)
    assert c.status == "complete" and c.version == 3
    assert c.image_row["camera_make"] == "Canon" and c.image_row["analysis_version"] == 3
    assert c.analysis_row["stage_status"] == {"preprocess": "ok", "metadata": "ok", "objects": "ok"}
    assert {(t["kind"], t["tag"]) for t in c.tags} == {("camera", "canon eos"), ("year", "2020"), ("object", "dog")}
    assert c.point["payload"]["user_id"] == "u" and c.point["vectors"] == {}
    assert c.invalidation["keys"] == ["image:img", "user:u:gallery", "user:u:tags"]
    # the notification is a valid ImageAnalyzed record, with the consumers' summary
    _, back = codec.decode(codec.encode("ImageAnalyzed", c.analyzed))
    assert back["summary"]["objects"] == 1 and back["summary"]["faces"] == 0 and back["summary"]["text_excerpt"] is None
    codec.encode("CacheInvalidation", c.invalidation)


def test_tags_skip_failed_stages():
    assert tags_of({"metadata": md(status="failed")}) == []


# --- the deadline allows for queued work (defect 4): a stage's result expires only when it moved on --------

from lensflow.agents.join_state import Progress, aggregated  # noqa: E402


def waiting_for_objects(produced=0, partition=0, offset=100):
    """An image whose images.prepared record was read at ``partition``/``offset``, waiting for objects."""
    rec = prepared(expected=["metadata", "objects"], produced=produced)
    e, _ = merge(None, "preprocess", codec.encode("ImagePrepared", rec), rec, T0, TIMEOUT, partition, offset)
    e, _ = feed(e, "MetadataResult", md())
    return e


def test_a_backlogged_stage_keeps_the_image_waiting_past_the_deadline():
    e = waiting_for_objects(produced=0)
    progress = Progress(started=T0, timeout_ms=TIMEOUT)
    late = T0 + 5 * TIMEOUT
    # objects keeps reporting, but only images that entered the pipeline before this one (its backlog)
    progress.saw("objects", 0, 60, late - 10)
    assert decide(e, late, progress).action == "wait"
    assert decide(e, late).action == "complete"  # the wall clock alone would have given up


def test_a_stage_that_moved_past_the_image_expires_it():
    e = waiting_for_objects(produced=0)
    progress = Progress(started=T0, timeout_ms=TIMEOUT)
    progress.saw("objects", 0, 101, T0 + TIMEOUT)  # reported a later image of the same partition
    assert decide(e, T0 + TIMEOUT - 1, progress).action == "wait"  # never before the wall-clock deadline
    d = decide(e, T0 + TIMEOUT, progress)
    assert d.action == "complete" and d.missing == ["objects"]


def test_a_silent_stage_expires_the_image_after_the_timeout():
    e = waiting_for_objects(produced=0)
    progress = Progress(started=T0, timeout_ms=TIMEOUT)
    progress.saw("objects", 0, None, T0 + 1)
    assert decide(e, T0 + TIMEOUT, progress).action == "wait"
    assert decide(e, T0 + TIMEOUT + 1, progress).action == "complete"


def test_downtime_longer_than_the_timeout_does_not_expire_images():
    """A join restarted after a long outage starts its progress afresh: the stages get a full timeout."""
    e = waiting_for_objects(produced=0)
    restarted = T0 + 100 * TIMEOUT
    assert decide(e, restarted, Progress(started=restarted, timeout_ms=TIMEOUT)).action == "wait"


def test_an_expired_phase_one_is_still_described():
    e, _ = feed(None, "ImagePrepared", prepared(expected=["metadata", "objects"], derived=["describe"]))
    e, _ = feed(e, "MetadataResult", md())
    d = decide(e, T0 + TIMEOUT)
    assert d.action == "aggregate" and d.missing == ["objects"]
    e = aggregated(e, T0 + TIMEOUT, TIMEOUT)
    assert decide(e, T0 + TIMEOUT + 1).action == "wait"  # phase 2 has its own clock
    e["results"]["describe"] = {"run_id": "r1", "at": T0, "b64": ""}
    d = decide(e, T0 + TIMEOUT + 1)
    assert d.action == "complete" and d.missing == ["objects"]


def test_a_later_image_of_another_partition_says_nothing():
    """Order holds only within a partition: a stage may well report images of partition 1 first."""
    e = waiting_for_objects(produced=0, partition=0)
    progress = Progress(started=T0, timeout_ms=TIMEOUT)
    progress.saw("objects", 1, 500, T0 + TIMEOUT)
    assert decide(e, T0 + TIMEOUT, progress).action == "wait"


def test_a_stalled_join_does_not_make_stages_look_silent():
    e = waiting_for_objects(produced=0)
    progress = Progress(started=T0, timeout_ms=TIMEOUT)
    progress.saw("objects", 0, None, T0 + 1)
    progress.resume(T0 + 3 * TIMEOUT)  # the join was stuck on a store until now
    assert decide(e, T0 + 3 * TIMEOUT + 1, progress).action == "wait"
    assert decide(e, T0 + 4 * TIMEOUT, progress).action == "complete"


def test_places_are_offsets_not_production_times():
    """preprocess finishes a batch's images out of order: an earlier offset may carry a later
    produced_at. Only the offset says whether a stage has passed an image."""
    e = waiting_for_objects(produced=5_000, offset=100)  # produced last, read first
    progress = Progress(started=T0, timeout_ms=TIMEOUT)
    progress.saw("objects", 0, 99, T0 + TIMEOUT)  # an image before it in the partition
    assert decide(e, T0 + TIMEOUT, progress).action == "wait"


def test_a_second_prepared_copy_of_the_run_keeps_the_image_s_earliest_place():
    """preprocess redone after a crash writes the image's images.prepared again, later in the partition.
    The stages may answer from the first copy; taking the later offset as the image's place would move
    their watermark past images they have not read yet and expire those images early (the chaos test
    saw such images stored as partial)."""
    e = waiting_for_objects(produced=0, offset=100)
    again = prepared(expected=["metadata", "objects"], produced=1_000)
    e, changed = merge(e, "preprocess", codec.encode("ImagePrepared", again), again, T0 + 1_000, TIMEOUT, 0, 160)
    assert changed and e["offset"] == 100
    # a result answered from the first copy says the stage has read up to offset 100, not 160
    other = waiting_for_objects(produced=0, offset=130)
    progress = Progress(started=T0, timeout_ms=TIMEOUT)
    progress.saw("objects", 0, e["offset"], T0 + TIMEOUT)
    assert decide(other, T0 + TIMEOUT, progress).action == "wait"


# --- two runs of one image in flight at once (the same photo submitted twice) ----------------------------

def prepared_run(run, uploaded_ms, produced=0):
    rec = prepared(run=run, expected=["metadata"], produced=produced)
    rec["uploaded_at"] = at(uploaded_ms)
    return rec


def test_a_newer_run_supersedes_the_one_in_flight_and_both_are_answered():
    e, _ = feed(None, "ImagePrepared", prepared_run("r1", 0))
    e, _ = feed(e, "MetadataResult", md(run="r1"))
    e, changed = feed(e, "ImagePrepared", prepared_run("r2", 10))
    assert changed and e["run_id"] == "r2" and [s["run_id"] for s in e["superseded"]] == ["r1"]
    assert e["results"] == {}  # r1's results are not r2's
    e, _ = feed(e, "MetadataResult", md(run="r2"))
    assert decide(e, T0).action == "complete"


def test_an_older_run_arriving_second_is_superseded_at_once():
    e, _ = feed(None, "ImagePrepared", prepared_run("r2", 10))
    e, changed = feed(e, "ImagePrepared", prepared_run("r1", 0))
    assert changed and e["run_id"] == "r2" and [s["run_id"] for s in e["superseded"]] == ["r1"]
    e2, changed = feed(e, "ImagePrepared", prepared_run("r1", 0))  # redelivered: nothing new
    assert not changed and e2 == e


def test_runs_uploaded_in_the_same_millisecond_are_ordered_by_run_id():
    a, _ = feed(None, "ImagePrepared", prepared_run("ra", 5))
    a, _ = feed(a, "ImagePrepared", prepared_run("rb", 5))
    b, _ = feed(None, "ImagePrepared", prepared_run("rb", 5))
    b, _ = feed(b, "ImagePrepared", prepared_run("ra", 5))
    assert a["run_id"] == b["run_id"] == "rb"  # whichever arrives first
    assert [s["run_id"] for s in a["superseded"]] == [s["run_id"] for s in b["superseded"]] == ["ra"]


def test_a_run_s_results_that_came_before_its_prepared_are_kept_when_the_entry_switches_to_it():
    """The same photo submitted twice: run r2's metadata arrives while the entry is still on r1 (metadata
    is produced before images.prepared); when r2's images.prepared comes, that metadata is r2's."""
    e, _ = feed(None, "ImagePrepared", prepared_run("r1", 0))
    e, changed = feed(e, "MetadataResult", md(run="r2"))
    assert changed
    e, _ = feed(e, "ImagePrepared", prepared_run("r2", 10))
    assert e["run_id"] == "r2" and "metadata" in e["results"]
    assert decide(e, T0).action == "complete"


def test_results_of_a_run_still_to_be_prepared_outlive_the_run_that_completes():
    """20 submits of one photo at once: r2's metadata arrives while r1 is in flight, and r1 completes
    before r2's images.prepared comes. r2's metadata must stay in the table, or r2 ends partial."""
    from lensflow.agents.join_state import after_completion

    e, _ = feed(None, "ImagePrepared", prepared_run("r1", 0))
    e, _ = feed(e, "MetadataResult", md(run="r2"))
    e, _ = feed(e, "MetadataResult", md(run="r1"))
    assert decide(e, T0).action == "complete"
    rest = after_completion(e, T0, TIMEOUT)
    assert rest is not None and rest["prepared"] is None and list(rest["others"]) == ["r2"]
    rest, _ = feed(rest, "ImagePrepared", prepared_run("r2", 10))
    assert rest["run_id"] == "r2" and "metadata" in rest["results"] and decide(rest, T0).action == "complete"
    assert after_completion(rest, T0, TIMEOUT) is None  # nothing else held: the entry goes


def test_confident_concepts_become_tags():
    from lensflow.agents.join_projection import tags_of

    scene = {"status": "ok", "environment": None, "places": [], "events": [],
             "classes": [{"label": "tripod", "score": 0.94}, {"label": "missile", "score": 0.1}]}
    assert [(t["kind"], t["tag"]) for t in tags_of({"scene": scene})] == [("concept", "camera"), ("concept", "tripod")]


def test_duplicates_are_flagged_tagged_and_kept_in_the_payload():
    from lensflow.agents.join_projection import mark_duplicates

    c = assemble(prepared(expected=["metadata"]), {"metadata": md()}, {"metadata": b"x"}, ["metadata"], 1)
    mark_duplicates(c, ["img", "other"], [("near1", 0.97), ("other", 0.99)])
    assert c.image_row["duplicate_of"] == ["other"] and c.image_row["near_duplicates"] == ["near1"]
    assert {(t["kind"], t["tag"]) for t in c.tags} >= {("duplicate", "duplicate"), ("duplicate", "near-duplicate")}
    assert c.point["payload"]["duplicate_of"] == ["other", "near1"] and "near-duplicate" in c.point["payload"]["tags"]
    mark_duplicates(c, [], [])  # analysed again after the others were deleted: no longer a duplicate
    assert c.image_row["duplicate_of"] is None and not [t for t in c.tags if t["kind"] == "duplicate"]


def test_a_late_result_already_stored_sends_its_invalidation_again():
    """A late result merged into the stored run, then a crash before its cache invalidation was
    delivered: redelivered, the result is already in the stored run. The join must still answer with
    the invalidation (rewriting the run idempotently at its version), not drop it for good."""
    import asyncio

    from lensflow.streams.store import StoredImage

    late = objects()
    stored_records = {"preprocess": codec.encode("ImagePrepared", prepared(expected=["metadata", "objects"])),
                      "metadata": codec.encode("MetadataResult", md()),
                      "objects": codec.encode("ObjectsResult", late)}  # the late result, written before the crash
    join = _join_over(stored_records, StoredImage("r1", 2, "u", "r1"))
    entry, _ = feed(None, "ObjectsResult", late)  # redelivered after the crash: no images.prepared with it
    assert decide(entry, T0 + TIMEOUT).action == "unprepared"
    finish = asyncio.new_event_loop().run_until_complete(join.unprepared(b"img", entry, T0 + TIMEOUT))
    assert finish is not None and finish.completed is not None and finish.write and not finish.notify, finish
    assert finish.completed.version == 2 and finish.completed.invalidation["image_id"] == "img"


def test_a_result_after_the_deadline_of_an_announced_run_is_merged_not_dropped():
    """The run was completed partial at its deadline (objects missing) and announced; its entry is still
    held when the objects result comes. The join merged nothing and dropped it as "run_already_stored"
    (the chaos test saw 7 of 150 images stay partial this way): it must be merged into the stored run
    like any late result (version + 1, an invalidation, no second ImageAnalyzed). A result of a stage
    the stored run already has (a stage run again after a crash) is a redelivery: nothing is written."""
    import asyncio

    from lensflow.streams.store import StoredImage

    stored_records = {"preprocess": codec.encode("ImagePrepared", prepared(expected=["metadata", "objects"])),
                      "metadata": codec.encode("MetadataResult", md())}  # objects: timed out, no record
    join = _join_over(stored_records, StoredImage("r1", 1, "u", "r1"))
    entry, _ = feed(None, "ImagePrepared", prepared(expected=["metadata", "objects"]))
    entry, _ = feed(entry, "MetadataResult", md())
    entry, _ = feed(entry, "ObjectsResult", objects(), now=TIMEOUT + 1)  # after the run's deadline
    loop = asyncio.new_event_loop()
    finish = loop.run_until_complete(join.late_into_announced(b"img", entry))
    assert finish is not None and finish.completed is not None and finish.write and not finish.notify, finish
    assert finish.completed.version == 2 and finish.completed.invalidation["image_id"] == "img"
    assert finish.completed.analyzed["status"] == "complete"
    stored_records["objects"] = codec.encode("ObjectsResult", objects(produced=5))  # has it, other bytes
    assert loop.run_until_complete(join.late_into_announced(b"img", entry)) is None


def _join_over(stored_records: dict, stored):
    """A Join whose store answers ``stored`` (a StoredImage) and ``stored_records`` (stage -> bytes)."""
    import structlog

    from lensflow.agents.join import Join

    class Cassandra:
        async def current(self, image_id):
            return stored

        async def stage_records(self, image_id, run_id):
            return dict(stored_records)

    join = Join.__new__(Join)
    join.ctx = type("Ctx", (), {"codec": codec})()
    join.ctx.stores = type("Stores", (), {"cassandra": Cassandra()})()
    join.log = structlog.get_logger("test")
    join.orphan_after_ms = 600_000
    join._prefetched = set()  # no batch read the row first: the join reads it itself
    return join
