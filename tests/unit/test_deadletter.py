"""`lensflow deadletter`: the pure parts — rebuilding an upload from a dead letter, the replay run id,
`--since`, the filters, one run per image — on records built and encoded with the real codec."""

from datetime import datetime, timedelta, timezone

import pytest

from lensflow.streams.codec import Codec
from lensflow.streams.deadletter import (
    REPLAY_SOURCE,
    Filter,
    Letter,
    expand,
    jsonable,
    parse_letter_id,
    parse_since,
    plan_replay,
    replay_run_id,
    summary,
    upload_from_deadletter,
)

codec = Codec()
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
UPLOADED_AT = datetime(2024, 5, 1, 11, 0, tzinfo=timezone.utc)


def uploaded(image="img-1", run="run-1", stages=None, attributes=None):
    return {"image_id": image, "user_id": "alice", "run_id": run, "uri": f"file:///s/uploads/alice/{image}.jpg",
            "content_type": "image/jpeg", "size_bytes": 1234, "uploaded_at": UPLOADED_AT, "stages": stages,
            "source": "lensflow-cli", "attributes": attributes or {"file": "a.jpg"}}


def prepared(image="img-1", run="run-1", expected=("metadata", "objects"), derived=("describe",), mode="full"):
    return {"image_id": image, "user_id": "alice", "run_id": run, "stage": "preprocess", "model": None, "status": "ok",
            "error": None, "duration_ms": 3.0, "produced_at": T0, "source_uri": f"file:///s/uploads/alice/{image}.jpg",
            "uri": f"file:///s/derived/{image}.jpg", "format": "JPEG", "mime_type": "image/jpeg", "size_bytes": 1234,
            "sha256": "ab", "original_width": 4, "original_height": 3, "width": 4, "height": 3, "orientation": 1,
            "derivative_sha256": "cd", "derivative_size_bytes": 99, "expected_stages": list(expected),
            "derived_stages": list(derived), "uploaded_at": UPLOADED_AT, "mode": mode}


def objects_result(image="img-1", run="run-1"):
    return {"image_id": image, "user_id": "alice", "run_id": run, "stage": "objects", "model": None, "status": "ok",
            "error": None, "duration_ms": 20.0, "produced_at": T0,
            "detections": [{"label": "Dog", "class_id": 16, "confidence": 0.9, "box": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}}]}


def aggregated(image="img-1", run="run-1", with_prepared=True):
    return {"image_id": image, "user_id": "alice", "run_id": run, "status": "complete",
            "prepared": prepared(image, run) if with_prepared else None, "metadata": None, "objects": None, "scene": None,
            "text": None, "faces": None, "embedding": None, "stages": [], "aggregated_at": T0}


def deadletter(stage, value: bytes, *, record=None, image="img-1", run="run-1", code="fetch_failed", inputs=(),
               failed_at=T0, topic="images.uploaded"):
    """A DeadLetter as `list` reads it: encoded with the real codec, decoded back."""
    dl = {"stage": stage, "topic": topic, "partition": 2, "offset": 41, "key": image.encode() if image else None,
          "value": value, "image_id": image, "user_id": "alice" if image else None, "run_id": run, "record": record,
          "error": {"code": code, "message": "it broke", "retryable": code == "fetch_failed", "attempts": 3},
          "failed_at": failed_at, "first_failed_at": failed_at - timedelta(seconds=5) if failed_at else None,
          "inputs": [{"topic": t, "key": image.encode() if image else None, "value": v} for t, v in inputs]}
    return codec.decode(codec.encode("DeadLetter", dl), expect="DeadLetter")[1]


def enc(name, rec):
    return codec.encode(name, rec)


# --- the run-id rule ------------------------------------------------------------------------------

def test_replay_run_id_is_deterministic_from_the_dead_letter_position():
    assert replay_run_id("run-1", 3, 17) == "run-1~replay-3-17"
    assert replay_run_id("run-1", 3, 17) == replay_run_id("run-1", 3, 17)
    assert replay_run_id("run-1", 3, 18) != replay_run_id("run-1", 3, 17)


def test_letter_ids_round_trip_and_garbage_is_refused():
    assert parse_letter_id("3:17") == (3, 17)
    assert Letter(3, 17, None).id == "3:17"
    for bad in ["3", "a:b", "3:-1", "", "3:17:1"]:
        with pytest.raises(ValueError, match="PARTITION:OFFSET"):
            parse_letter_id(bad)


# --- rebuilding the upload --------------------------------------------------------------------------

def test_a_preprocess_dead_letter_replays_its_upload_as_is_under_a_new_run():
    up = uploaded(stages=["metadata", "faces"])
    dl = deadletter("preprocess", enc("ImageUploaded", up), record="lensflow.v1.ImageUploaded")
    new, how = upload_from_deadletter(dl, codec, 5, 99)
    assert new is not None and "ImageUploaded" in how
    assert new["run_id"] == "run-1~replay-5-99"
    assert new["source"] == REPLAY_SOURCE
    assert new["attributes"] == {"file": "a.jpg", "replay_of": "5:99", "replay_code": "fetch_failed", "replay_stage": "preprocess"}
    for k in ("image_id", "user_id", "uri", "content_type", "size_bytes", "stages"):
        assert new[k] == up[k]
    assert new["uploaded_at"] == UPLOADED_AT
    codec.encode("ImageUploaded", new)  # a valid ImageUploaded


def test_a_pixel_stage_dead_letter_rebuilds_the_upload_from_its_image_prepared():
    dl = deadletter("objects", enc("ImagePrepared", prepared(expected=["metadata", "objects", "metadata"])),
                    code="internal", topic="images.prepared")
    new, how = upload_from_deadletter(dl, codec, 0, 7)
    assert new == {"image_id": "img-1", "user_id": "alice", "run_id": "run-1~replay-0-7",
                   "uri": "file:///s/uploads/alice/img-1.jpg", "content_type": None, "size_bytes": None,
                   "uploaded_at": UPLOADED_AT, "stages": ["metadata", "objects", "describe"], "source": REPLAY_SOURCE,
                   "attributes": {"replay_of": "0:7", "replay_code": "internal", "replay_stage": "objects"}}
    assert "ImagePrepared" in how
    codec.encode("ImageUploaded", new)


def test_no_stages_in_the_prepared_record_means_the_configured_default():
    dl = deadletter("objects", enc("ImagePrepared", prepared(expected=[], derived=[])), code="internal")
    new, _ = upload_from_deadletter(dl, codec, 0, 1)
    assert new["stages"] is None


def test_a_describe_dead_letter_uses_the_prepared_record_inside_the_aggregate():
    dl = deadletter("describe", enc("ImageAggregated", aggregated()), code="internal", topic="images.aggregated")
    new, how = upload_from_deadletter(dl, codec, 1, 2)
    assert new["uri"] == "file:///s/uploads/alice/img-1.jpg" and new["run_id"] == "run-1~replay-1-2"
    assert "inside its ImageAggregated" in how


def test_an_aggregate_without_prepared_and_no_inputs_is_skipped():
    dl = deadletter("describe", enc("ImageAggregated", aggregated(with_prepared=False)), code="internal")
    new, why = upload_from_deadletter(dl, codec, 1, 2)
    assert new is None and "without its ImagePrepared" in why


def test_a_join_dead_letter_finds_the_image_prepared_among_its_inputs():
    inputs = [("analysis.objects", enc("ObjectsResult", objects_result())),
              ("images.prepared", enc("ImagePrepared", prepared(run="run-0"))),  # an older run it still held
              ("images.prepared", enc("ImagePrepared", prepared(run="run-1", expected=["metadata", "scene"], derived=[])))]
    dl = deadletter("join", enc("ObjectsResult", objects_result()), code="store_rejected", inputs=inputs,
                    topic="analysis.objects")
    new, how = upload_from_deadletter(dl, codec, 4, 8)
    assert new["stages"] == ["metadata", "scene"]  # the prepared record of the dead letter's own run
    assert new["run_id"] == "run-1~replay-4-8"
    assert "among its inputs" in how


def test_a_join_dead_letter_without_a_prepared_input_is_skipped_with_the_reason():
    dl = deadletter("join", enc("ObjectsResult", objects_result()), code="internal",
                    inputs=[("analysis.objects", enc("ObjectsResult", objects_result()))])
    new, why = upload_from_deadletter(dl, codec, 4, 8)
    assert new is None and "no ImagePrepared among its 1 input(s)" in why


def test_a_poison_record_is_not_replayed():
    dl = deadletter("preprocess", b"\x01garbage that is no avro", image=None, run=None, code="poison")
    new, why = upload_from_deadletter(dl, codec, 0, 3)
    assert new is None
    assert why.startswith("poison record: not decodable (") and why.endswith("nothing to replay")


def test_a_poison_stage_result_still_replays_when_the_join_held_the_prepared_record():
    dl = deadletter("join", b"\x01garbage that is no avro", code="poison",
                    inputs=[("images.prepared", enc("ImagePrepared", prepared()))])
    new, how = upload_from_deadletter(dl, codec, 0, 3)
    assert new is not None and "not decodable" in how


def test_a_reanalysis_dead_letter_is_skipped_rather_than_dropping_the_other_stages():
    dl = deadletter("objects", enc("ImagePrepared", prepared(expected=["objects"], derived=[], mode="merge")), code="internal")
    new, why = upload_from_deadletter(dl, codec, 0, 3)
    assert new is None and "lensflow reanalyze --stage objects" in why


def test_a_record_of_another_image_than_the_dead_letter_names_is_refused():
    dl = deadletter("preprocess", enc("ImageUploaded", uploaded(image="img-2")), image="img-1")
    new, why = upload_from_deadletter(dl, codec, 0, 3)
    assert new is None and "inconsistent" in why


def test_the_original_run_id_comes_from_the_record_when_the_dead_letter_has_none():
    dl = deadletter("preprocess", enc("ImageUploaded", uploaded(run="run-9")), run=None)
    new, _ = upload_from_deadletter(dl, codec, 0, 3)
    assert new["run_id"] == "run-9~replay-0-3"


# --- one run per image ---------------------------------------------------------------------------------

def test_replay_plan_keeps_only_the_newest_replayable_dead_letter_of_each_image():
    older = Letter(2, 10, deadletter("preprocess", enc("ImageUploaded", uploaded()), failed_at=T0))
    newer = Letter(2, 11, deadletter("objects", enc("ImagePrepared", prepared()), code="internal", failed_at=T0 + timedelta(minutes=1)))
    other = Letter(0, 5, deadletter("preprocess", enc("ImageUploaded", uploaded(image="img-2")), image="img-2"))
    poison = Letter(1, 1, deadletter("preprocess", b"\x02nope-nope", image=None, run=None, code="poison",
                                     failed_at=T0 + timedelta(hours=1)))
    broken = Letter(1, 2, None, error="unknown framing")
    decisions = plan_replay([older, newer, other, poison, broken], codec)
    by_id = {d.letter.id: d for d in decisions}
    assert [d.letter.id for d in decisions] == ["2:10", "2:11", "0:5", "1:1", "1:2"]
    assert by_id["2:11"].replayed and by_id["2:11"].upload["run_id"] == "run-1~replay-2-11"
    assert not by_id["2:10"].replayed and "superseded by 2:11" in by_id["2:10"].reason
    assert by_id["0:5"].replayed
    assert not by_id["1:1"].replayed and by_id["1:1"].reason.startswith("poison record")
    assert not by_id["1:2"].replayed and "does not decode" in by_id["1:2"].reason


def test_replaying_the_same_dead_letter_twice_is_the_same_run():
    letter = Letter(2, 10, deadletter("preprocess", enc("ImageUploaded", uploaded())))
    first = plan_replay([letter], codec)[0].upload
    second = plan_replay([letter], codec)[0].upload
    assert first == second


# --- --since ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("30m", T0 - timedelta(minutes=30)), ("2h", T0 - timedelta(hours=2)), ("1d", T0 - timedelta(days=1)),
    ("45s", T0 - timedelta(seconds=45)), ("1w", T0 - timedelta(weeks=1)), (" 1.5H ", T0 - timedelta(hours=1.5)),
    ("2024-04-30", datetime(2024, 4, 30, tzinfo=timezone.utc)),
    ("2024-04-30T08:15", datetime(2024, 4, 30, 8, 15, tzinfo=timezone.utc)),
    ("2024-04-30 08:15:00", datetime(2024, 4, 30, 8, 15, tzinfo=timezone.utc)),
    ("2024-04-30T08:15:00Z", datetime(2024, 4, 30, 8, 15, tzinfo=timezone.utc)),
    ("2024-04-30T10:15:00+02:00", datetime(2024, 4, 30, 8, 15, tzinfo=timezone.utc)),
])
def test_since_accepts_ages_and_iso_dates(text, expected):
    got = parse_since(text, now=T0)
    assert got == expected and got.tzinfo is not None


@pytest.mark.parametrize("text", ["yesterday", "2h30m", "-2h", "2024-13-01", "", "10y"])
def test_since_refuses_anything_else(text):
    with pytest.raises(ValueError, match="--since"):
        parse_since(text, now=T0)


# --- filters -----------------------------------------------------------------------------------------------

def test_filters_select_by_stage_code_since_image_and_id():
    a = Letter(0, 1, deadletter("preprocess", enc("ImageUploaded", uploaded()), code="fetch_failed", failed_at=T0))
    b = Letter(0, 2, deadletter("join", enc("ObjectsResult", objects_result(image="img-2")), image="img-2", code="internal",
                                failed_at=T0 + timedelta(hours=2)))
    bad = Letter(1, 0, None, timestamp_ms=int((T0 + timedelta(hours=3)).timestamp() * 1000), error="garbage")
    letters = [a, b, bad]
    assert Filter().select(letters) == letters
    assert Filter(stage="join").select(letters) == [b]
    assert Filter(code="fetch_failed").select(letters) == [a]
    assert Filter(image="img-2").select(letters) == [b]
    assert Filter(since=T0 + timedelta(hours=1)).select(letters) == [b, bad]  # an undecodable one by Kafka time
    assert Filter(stage="join", code="fetch_failed").select(letters) == []
    assert Filter(ids=frozenset({"0:1", "1:0"})).select(letters) == [a, bad]


# --- output ------------------------------------------------------------------------------------------------

def test_summary_and_show_view_are_json_ready():
    import json

    dl = deadletter("join", b"\x01garbage that is no avro", code="poison",
                    inputs=[("images.prepared", enc("ImagePrepared", prepared()))])
    s = summary(Letter(3, 9, dl))
    assert s["id"] == "3:9" and s["code"] == "poison" and s["inputs"] == 1 and s["failed_at"] == T0.isoformat()
    json.dumps(s)
    full = jsonable(expand(dl, codec))
    assert full["value"]["record"] is None and full["value"]["hex"] == b"\x01garbage that is no avro".hex()
    assert full["inputs"][0]["record"] == "lensflow.v1.ImagePrepared"
    assert full["inputs"][0]["decoded"]["source_uri"] == "file:///s/uploads/alice/img-1.jpg"
    assert full["key"] == "img-1"
    json.dumps(full)
