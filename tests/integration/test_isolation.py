"""Duplicates and isolation between users, on one worker (the read service's isolation: test_api.py):

* the same photo submitted 20 times at once is one image, every submitter gets `complete`;
* an image id is its first owner's: another user's run reusing it fails with `id_conflict` and
  leaves the owner's row alone;
* a user cannot point lensflow at another user's storage area (`wrong_owner`), an unsafe user
  id is refused by the CLI before anything is written, and a file's name cannot steer where
  `submit` stores it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from lensflow.streams.records import image_id_for, now
from tests.conftest import PHOTOS

from .conftest import LENSFLOW, Namespace
from .helpers import read_topic, wait_for

pytestmark = pytest.mark.integration
DUP_PHOTO = PHOTOS / "road_cars_canberra.jpg"
OWNED_PHOTO = PHOTOS / "obama_portrait.jpg"


@pytest.fixture(scope="module")
def ns(stack, tmp_path_factory):
    ns = Namespace(stack, tmp_path_factory.mktemp("lensflow-isolation"), join_timeout_s=4, join_tick_interval_s=1)
    ns.cli("init")
    ns.start_worker()
    yield ns
    ns.close()


def storage(ns) -> Path:
    return ns.data_dir / "storage"


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def one_line(stderr: str) -> bool:
    return len(stderr.strip().splitlines()) == 1


def in_bobs_area(ns) -> Path:
    """A copy of a photo lying in user bob's own storage area."""
    path = storage(ns) / "uploads" / "bob" / "x.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OWNED_PHOTO, path)
    return path


def assert_no_internal_errors(ns) -> None:
    log = ns.log_path.read_text(errors="replace")
    assert '"code": "internal"' not in log and "Traceback" not in log, ns.log_tail()
    assert json_lines(ns.cli("deadletter", "list", "--json", "--code", "internal").stdout) == []


def test_the_same_photo_submitted_20_times_at_once_is_one_image(ns):
    procs = [subprocess.Popen(LENSFLOW + ["submit", "--user", "dup", "--wait", "--json", "--timeout", "90", str(DUP_PHOTO)],
                              env=ns.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(20)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        outs.append((p.returncode, stdout, stderr))
    image_id = image_id_for("dup", hashlib.sha256(DUP_PHOTO.read_bytes()).hexdigest())
    unanswered = [(code, stdout, stderr) for code, stdout, stderr in outs if code != 0]
    if unanswered:  # say which runs the join never announced, and how their images.prepared records looked
        announced = {rec["run_id"] for _, rec in read_topic(ns.topic("images.analyzed"), idle_s=2)}
        prepared = sorted((str(rec["produced_at"]), rec["run_id"], "announced" if rec["run_id"] in announced else "NOT ANNOUNCED")
                          for _, rec in read_topic(ns.topic("images.prepared"), idle_s=2) if rec["image_id"] == image_id)
        code, stdout, stderr = unanswered[0]
        raise AssertionError(
            f"{len(unanswered)} of 20 concurrent submitters got no ImageAnalyzed for their run: the join drops a run "
            f"superseded in flight by another run of the same image (agents/join_state.py merge) (first: exit {code}, "
            f"{stdout.strip()} {stderr.strip()}); images.prepared of {image_id} (produced_at, run, announced?):\n"
            + "\n".join("  " + " ".join(p) for p in prepared))
    for code, stdout, stderr in outs:
        lines = json_lines(stdout)
        assert code == 0 and len(lines) == 1, f"exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        r = lines[0]
        assert r["image_id"] == image_id and r["status"] == "complete" and r["error"] is None, json.dumps(r, default=str)
        assert "internal" not in stdout + stderr
    rows = list(ns.cql.execute("SELECT image_id, user_id, status FROM images WHERE image_id = %s", (image_id,)))
    assert len(rows) == 1 and rows[0].user_id == "dup" and rows[0].status == "complete", rows
    assert [r.image_id for r in ns.cql.execute("SELECT image_id FROM images_by_user WHERE user_id = 'dup'")] == [image_id]
    assert_no_internal_errors(ns)


def test_another_users_run_reusing_an_image_id_fails_with_id_conflict(ns):
    proc = ns.cli("submit", "--user", "alice", "--wait", "--json", "--timeout", "120", str(OWNED_PHOTO))
    (mine,) = json_lines(proc.stdout)
    assert mine["status"] == "complete", mine
    image_id = mine["image_id"]
    query = "SELECT user_id, run_id, status, analysis_version, uri FROM images WHERE image_id = %s"
    before = ns.cql.execute(query, (image_id,)).one()
    assert before.user_id == "alice" and before.status == "complete"

    from confluent_kafka import Producer

    from lensflow.streams.codec import Codec

    copy = in_bobs_area(ns)
    run_id = f"{uuid.uuid4()}:{image_id[:8]}"
    record = {"image_id": image_id, "user_id": "bob", "run_id": run_id, "uri": f"file://{copy}", "content_type": None,
              "size_bytes": copy.stat().st_size, "uploaded_at": now(), "stages": None, "source": "test-isolation",
              "attributes": {"file": "x.jpg"}}
    topic = ns.topic("images.uploaded")
    producer = Producer({"bootstrap.servers": "127.0.0.1:9092", "partitioner": "murmur2_random", "enable.idempotence": True,
                         "acks": "all"})
    producer.produce(topic, key=image_id.encode(), value=Codec().encode("ImageUploaded", record, topic=topic))
    assert producer.flush(30) == 0

    def bobs_event():
        return [rec for _, rec in read_topic(ns.topic("images.analyzed"), idle_s=2) if rec["run_id"] == run_id]

    events = wait_for(bobs_event, 120, interval=1, message=f"the ImageAnalyzed of bob's run {run_id}")
    assert len(events) == 1, events
    (event,) = events
    assert event["image_id"] == image_id and event["user_id"] == "bob", event
    assert event["status"] == "failed" and event["error"]["code"] == "id_conflict", event
    after = ns.cql.execute(query, (image_id,)).one()
    assert after == before, f"alice's row changed: {before} -> {after}"
    runs = [r.run_id for r in ns.cql.execute("SELECT run_id FROM analysis_results WHERE image_id = %s", (image_id,))]
    assert run_id not in runs and before.run_id in runs
    assert not list(ns.cql.execute("SELECT image_id FROM images_by_user WHERE user_id = 'bob'"))
    assert_no_internal_errors(ns)


def test_a_path_in_another_users_area_fails_with_wrong_owner(ns):
    theirs = in_bobs_area(ns)
    proc = ns.cli("submit", "--user", "alice", "--wait", "--json", "--timeout", "120", f"file://{theirs}", check=False)
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    (r,) = json_lines(proc.stdout)
    assert r["status"] == "failed" and r["error"]["code"] == "wrong_owner", r
    row = ns.cql.execute("SELECT user_id, status, error_code FROM images WHERE image_id = %s", (r["image_id"],)).one()
    assert row.user_id == "alice" and row.status == "failed" and row.error_code == "wrong_owner"


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def test_an_unsafe_user_id_is_refused_before_anything_is_written(ns):
    before = tree(storage(ns))
    proc = ns.cli("submit", "--user", "../x", str(OWNED_PHOTO), check=False)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "is not allowed" in proc.stderr and "Traceback" not in proc.stderr
    assert tree(storage(ns)) == before, f"written: {tree(storage(ns)) - before}"
    assert not (storage(ns) / "x").exists() and not (ns.data_dir / "x").exists()
    assert all(p == "uploads" or p.startswith("uploads/") for p in tree(storage(ns))), tree(storage(ns))
    assert one_line(proc.stderr), f"the CLI's failure should be one line on stderr, got:\n{proc.stderr}"


def test_a_file_name_cannot_steer_where_submit_stores_it(ns, tmp_path):
    crafted = tmp_path / "a.%2e%2e%2f%2e%2e%2f%2e%2e%2fbob%2fvictim"
    shutil.copyfile(OWNED_PHOTO, crafted)
    proc = ns.cli("submit", "--user", "mallory", "--wait", "--json", "--timeout", "120", str(crafted))
    (r,) = json_lines(proc.stdout)
    assert r["status"] == "complete", r
    assert not (storage(ns) / "uploads" / "bob" / "victim").exists(), "the file name wrote into bob's area"
    assert not any(p.startswith("uploads/bob/victim") for p in tree(storage(ns)))
    stored = {p for p in tree(storage(ns)) if p.startswith("uploads/mallory/")}
    assert f"uploads/mallory/{r['image_id']}" in stored, stored  # no extension: only image extensions are kept
    assert stored <= {f"uploads/mallory/{r['image_id']}", f"uploads/mallory/{r['image_id']}.prepared.jpg"}, stored
