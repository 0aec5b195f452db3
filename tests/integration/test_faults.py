"""The promise under the faults that were left (README, "The promise"): one transient error anywhere
in the join or in a stage's delivery, storage down for a minute, and a store that refuses everyone.
Real Kafka, Cassandra and Qdrant; the faults are injected into the worker process itself
(``tests/integration/faults``) or staged on the real store (a dropped table)."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

from .faults.inject import env as fault_env
from .helpers import wait_for
from .promise import (EVERY_STAGE, analyzed_events, dead_letters, fresh_namespace, photos, report, results_of, stored,
                      submit, submit_waiting, wait_stored)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def exif_photos(d: Path, n: int, seed: int) -> list[str]:
    """``photos`` with a camera in their EXIF, so that the metadata stage alone gives each image tags."""
    from PIL import Image

    out = []
    for path in photos(d, n, size=(640, 480), seed=seed):
        img = Image.open(path)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Canon", f"EOS {seed}"
        img.save(path, "JPEG", quality=85, exif=exif.tobytes())
        out.append(path)
    return out


def injected(ns) -> set[str]:
    text = ns.log_path.read_text(errors="replace")
    return {line.split("FAULT_INJECTED ", 1)[1].strip() for line in text.splitlines() if "FAULT_INJECTED " in line}


def test_one_transient_error_in_each_join_store_call_and_each_stage_delivery(stack, models, tmp_path):
    """A single timeout of each store call the join makes (the stored row's read, the duplicate reads,
    the write, the notified-run UPDATE, the Qdrant upsert) and a single failed delivery in each stage:
    every image completes with every stage ok, and each run is announced exactly once."""
    with fresh_namespace(stack, tmp_path / "data", env=fault_env(ROOT, "join-once", "publish-once"), join_timeout_s=8,
                         retry_base_s=0.05, retry_max_s=0.5) as ns:
        ns.start_worker()
        files = photos(tmp_path / "in", 16, seed=31)
        results = results_of(submit_waiting(ns, "once", files, stages=EVERY_STAGE, timeout=600), timeout=700)
        assert len(results) == 16 and {r["status"] for r in results.values()} == {"complete"}, \
            {i: (r["status"], r.get("error")) for i, r in results.items() if r["status"] != "complete"}
        fired = injected(ns)
        expected = {f"CassandraStore.{m}" for m in ("current_many", "same_bytes", "write", "mark_notified")} | \
                   {"QdrantStore.upsert_images", "QdrantStore.near_duplicates"} | \
                   {f"publish.{s}" for s in ("preprocess", "objects", "text", "faces", "visual", "describe", "join")}
        assert expected <= fired, f"faults not injected: {expected - fired}"
        not_ok = {(r.image_id, s, st) for r in ns.cql.execute("SELECT image_id, stage_status FROM analysis_results")
                  for s, st in (r.stage_status or {}).items() if st != "ok"}
        assert not not_ok, f"stages not ok after one transient error each: {sorted(not_ok)}"
        rows = stored(ns)
        assert set(rows) == set(results) and {s for s, _ in rows.values()} == {"complete"}
        time.sleep(20)  # past the join's deadline: an image left in its table would be announced again by now
        runs = {(i, r["run_id"]) for i, r in results.items()}
        counts = collections.Counter(analyzed_events(ns))
        assert set(counts) == runs, set(counts) ^ runs
        assert all(n == 1 for n in counts.values()), {k: n for k, n in counts.items() if n > 1}
        assert dead_letters(ns) == []
        assert ns.worker.poll() is None, "the worker restarted"
        report("one_transient_error_each", images=16, faults=len(fired))


def test_storage_down_for_a_minute_holds_the_images_instead_of_failing_them(stack, tmp_path):
    """Every read of storage fails (EIO) for 60 s while 100 images flow: none fails, none is
    dead-lettered, and they all complete once storage answers again."""
    flag = tmp_path / "storage-down"
    env = {**fault_env(ROOT, "storage"), "LENSFLOW_TEST_STORAGE_DOWN": str(flag)}
    with fresh_namespace(stack, tmp_path / "data", env=env, retry_base_s=0.2, retry_max_s=2,
                         storage_url=f"faulty://{str(tmp_path).lstrip('/')}/data/storage") as ns:
        ns.start_worker()
        files = photos(tmp_path / "in", 100, size=(640, 480), seed=32)
        flag.touch()
        down_at = time.monotonic()
        proc = submit_waiting(ns, "nfs", files, timeout=600)
        time.sleep(60)
        assert ns.worker.poll() is None, "the worker died during the storage outage:\n" + ns.log_tail()
        during = stored(ns)
        flag.unlink()
        up_at = time.monotonic()
        results = results_of(proc, timeout=700)
        settled = time.monotonic()
        assert during == {}, f"{len(during)} images were stored while storage was down: {set(during.values())}"
        assert "storage.read" in injected(ns)
        assert len(results) == 100 and {r["status"] for r in results.values()} == {"complete"}, \
            collections.Counter((r["status"], (r.get("error") or {}).get("code")) for r in results.values())
        assert {s for s, _ in stored(ns).values()} == {"complete"}
        assert dead_letters(ns) == []
        report("storage_down_60s", images=100, recovery_s=round(settled - up_at, 1), total_s=round(settled - down_at, 1))


def test_a_store_that_refuses_everyone_changes_no_stored_row(stack, tmp_path):
    """A table dropped mid-stream (the store refuses every write: Cassandra's ``unconfigured table``) is
    an outage: the stored rows keep their analysis, nothing is dead-lettered, the worker waits (not
    ready), and once the table is back every image completes."""
    with fresh_namespace(stack, tmp_path / "data", retry_base_s=0.2, retry_max_s=2, retry_deadline_s=5) as ns:
        ns.start_worker()
        first = exif_photos(tmp_path / "a", 10, seed=33)
        ids = submit(ns, "keys", first)
        wait_stored(ns, ids, 120)

        def state():
            """Each image's status, error code and number of tags: what a refusal taken for a bad image
            overwrote (the row rewritten as failed, its tags deleted)."""
            tags = collections.Counter(r.image_id for r in ns.cql.execute("SELECT image_id FROM image_tags"))
            return {r.image_id: (r.status, r.error_code, tags[r.image_id])
                    for r in ns.cql.execute("SELECT image_id, status, error_code FROM images")}

        before = state()
        assert all(n > 0 for _, _, n in before.values()), before
        ns.cql.execute("DROP TABLE analysis_results", timeout=60)
        again = submit(ns, "keys", first)  # a rewrite of every stored image
        more = submit(ns, "keys", exif_photos(tmp_path / "b", 10, seed=34))
        url = f"http://127.0.0.1:{ns.env['LENSFLOW_WEB_PORT']}/readyz"

        def not_ready():
            import httpx

            try:
                return httpx.get(url, timeout=5).status_code == 503
            except httpx.HTTPError:
                return False

        time.sleep(15)  # the rewrites' batches tried and retried
        during = state()
        changed = {i: (v, during.get(i)) for i, v in before.items() if during.get(i) != v}
        assert not changed, f"stored rows changed by the outage: {changed}"
        assert not {i: v for i, v in during.items() if v[0] != "complete"}, during
        wait_for(not_ready, 60, message="the worker to report not ready during the outage")
        assert ns.worker.poll() is None, "the worker exited:\n" + ns.log_tail()
        ns.cli("init", "--cql-only")  # the operator's fix: the schema back
        wanted = {**again, **more}
        wait_for(lambda: all(stored(ns).get(i) == ("complete", run) for i, run in wanted.items()), 180,
                 message="every image stored complete under its latest run after the fix")
        versions = {r.image_id: r.analysis_version for r in ns.cql.execute("SELECT image_id, analysis_version FROM images")}
        assert all(versions[i] == 2 for i in ids), versions
        assert dead_letters(ns) == []
