"""Stage groups as separate worker processes, each on its own Kafka consumer group, the way the Helm
chart deploys them: preprocess | vision (objects, scene, text, embedding) as two replicas |
faces + describe + join (the process that owns Qdrant's local storage). Every image completes with
every stage ok, also when one vision replica is killed mid-run; the rebalance pause and the
throughput with one and two replicas are measured and reported."""

from __future__ import annotations

import signal
import time

import pytest

from .conftest import Namespace
from .helpers import wait_for
from .promise import EVERY_STAGE, Worker, photos, report, results_of, stored, submit_waiting

pytestmark = pytest.mark.integration
VISION = "objects,scene,text,embedding"


def run_batch(ns, user: str, files: list[str]) -> tuple[dict, float]:
    t0 = time.monotonic()
    results = results_of(submit_waiting(ns, user, files, stages=EVERY_STAGE, timeout=600), timeout=700)
    return results, time.monotonic() - t0


def test_split_stage_groups_with_two_vision_replicas_and_a_kill(stack, models, tmp_path):
    ns = Namespace(stack, tmp_path / "data", join_timeout_s=30, join_tick_interval_s=1, session_timeout_s=10)
    workers: list[Worker] = []
    try:
        ns.cli("init")
        ns.data_dir.mkdir(parents=True, exist_ok=True)
        workers = [Worker(ns, "preprocess", "preprocess"), Worker(ns, "vision-1", VISION), Worker(ns, "vision-2", VISION),
                   Worker(ns, "sink", "faces,describe,join")]
        for w in workers:
            w.wait_ready()
        time.sleep(5)  # let the vision group settle on two members
        first, two_s = run_batch(ns, "groups", photos(tmp_path / "a", 40, seed=21))
        assert {r["status"] for r in first.values()} == {"complete"}, first

        # kill -9 one vision replica mid-run: its partitions move to the other one
        files = photos(tmp_path / "b", 60, seed=22)
        proc = submit_waiting(ns, "groups", files, stages=EVERY_STAGE, timeout=600)
        before = len(stored(ns))
        wait_for(lambda: len(stored(ns)) >= before + 10, 300, interval=0.2, message="progress before the kill")
        workers[2].stop(signal.SIGKILL)
        killed_at, last, last_count, pause = time.monotonic(), time.monotonic(), len(stored(ns)), 0.0
        while proc.poll() is None:
            n = len(stored(ns))
            now = time.monotonic()
            if n > last_count:
                pause, last, last_count = max(pause, now - last), now, n
            time.sleep(0.2)
        second = results_of(proc, timeout=60)
        assert len(second) == 60 and {r["status"] for r in second.values()} == {"complete"}, second
        rows = {r.image_id: r.status for r in ns.cql.execute("SELECT image_id, status FROM images")}
        assert len(rows) == 100 and set(rows.values()) == {"complete"}
        stages = {tuple(sorted((r.stage_status or {}).items()))
                  for r in ns.cql.execute("SELECT stage_status FROM analysis_results")}
        assert all(status == "ok" for s in stages for _, status in s), stages

        third, one_s = run_batch(ns, "groups", photos(tmp_path / "c", 40, seed=23))
        assert {r["status"] for r in third.values()} == {"complete"}
        report("stage_groups", images_per_s_two_vision_replicas=round(40 / two_s, 2),
               images_per_s_one_vision_replica=round(40 / one_s, 2),
               longest_pause_after_kill_s=round(pause, 1), kill_to_end_s=round(time.monotonic() - killed_at, 1),
               session_timeout_s=10)
    finally:
        for w in workers:
            w.stop()
        ns.close()


def test_stage_groups_after_the_whole_pipeline_on_the_same_data_dir(stack, models, tmp_path):
    """The whole pipeline in one process over some images, stopped, then the split groups on the same
    data dir (the way a user tries a split after ``lensflow worker``): each group keeps its local state
    under its own consumer group's folder, so the join of the split does not reopen the all-in-one
    join's RocksDB, and every image completes."""
    from .promise import submit, wait_stored

    ns = Namespace(stack, tmp_path / "data", join_timeout_s=30, join_tick_interval_s=1, session_timeout_s=10)
    workers: list[Worker] = []
    try:
        ns.cli("init")
        ns.start_worker()
        # a model stage, so that the join holds images across batches: its table (and changelog) is written
        first = submit(ns, "mixed", photos(tmp_path / "a", 8, seed=23), stages="objects")
        wait_stored(ns, first, 300)
        ns.stop_worker()
        ns.start_worker()  # a restart recovers the join's table from its changelog: RocksDB records the offsets
        ns.stop_worker()
        workers = [Worker(ns, "preprocess", "preprocess"), Worker(ns, "sink", "faces,describe,join")]
        for w in workers:
            w.wait_ready()
        more = submit(ns, "mixed", photos(tmp_path / "b", 8, seed=24), stages="faces")
        rows = wait_stored(ns, set(first) | set(more), 300)
        assert {s for s, _ in rows.values()} == {"complete"}
        assert all(w.proc.poll() is None for w in workers), "a group's worker exited"
    finally:
        for w in workers:
            w.stop()
        ns.close()
