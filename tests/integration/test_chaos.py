"""kill -9 chaos with every stage on: the worker is killed at random points, one of them inside the
join's store write (Cassandra frozen so the write hangs, then the kill). Afterwards three sets each
equal the submitted set exactly: the stored rows, the (image_id, run_id) pairs on images.analyzed,
and the images on cache.invalidations. Duplicate events a consumer would see are reported."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

import pytest

from .conftest import Namespace
from .helpers import wait_for
from .promise import EVERY_STAGE, analyzed_events, invalidated, log_has, photos, report, service_pid, stored, submit, trace

pytestmark = pytest.mark.integration
N = 150


@pytest.fixture()
def ns(stack, tmp_path):
    # static membership: each restarted worker takes its partitions back at once
    ns = Namespace(stack, tmp_path / "data", join_timeout_s=30, join_tick_interval_s=1, retry_max_s=2,
                   group_instance_id="chaos-worker")
    ns.cli("init")
    yield ns
    ns.close()


def test_kill_9_at_random_points_with_every_stage_on(ns, models, tmp_path):
    rng = random.Random(7)
    files = photos(tmp_path / "in", N, seed=3)
    ns.start_worker()
    submitted = submit(ns, "chaos", files, stages=EVERY_STAGE)
    kills = []
    # four kills at random moments of the run, each after the restarted worker has stored a few more images
    for _ in range(4):
        floor = len(stored(ns)) + 8
        wait_for(lambda: len(stored(ns)) >= floor, 180, interval=0.2, message=f"{floor} images stored")
        time.sleep(rng.uniform(0, 3))
        kills.append(("random", len(stored(ns))))
        ns.stop_worker(sig=signal.SIGKILL)
        ns.start_worker()
    floor = kills[-1][1] + 8
    wait_for(lambda: len(stored(ns)) >= floor, 180, interval=0.2, message="progress after the last restart")
    # one kill inside the join's store write: Cassandra frozen, the join's batch hanging in its write
    def retrying() -> int:
        """The join's retries of a store call so far: its batch (the reads and writes) or, once the rows
        are written, its notified-run UPDATE after delivery (the row is the last thing a write sends)."""
        text = ns.log_path.read_text(errors="replace")
        return text.count('"what": "join batch"') + text.count('"what": "join after delivery"')

    before = retrying()
    count = len(stored(ns))
    pid = service_pid(ns.env, "cassandra")
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: retrying() > before, 90, interval=0.5, message="the join to be retrying a store call")
        kills.append(("inside the join's store write", count))
        ns.stop_worker(sig=signal.SIGKILL)
    finally:
        os.kill(pid, signal.SIGCONT)
    ns.start_worker()
    try:
        wait_for(lambda: (lambda r: r if set(r) >= set(submitted) and all(
            r[i][0] == "complete" for i in submitted) else None)(stored(ns)), 600, interval=1,
            message=f"all {N} images complete after {len(kills)} kills")
    except AssertionError as exc:
        rows = stored(ns)
        behind = [i for i in submitted if rows.get(i, ("",))[0] != "complete"]
        raise AssertionError(f"{exc}; kills {kills}; not complete: {len(behind)}\n{trace(ns, behind)}") from None
    time.sleep(3)  # let redelivered duplicates, if any, land
    rows = stored(ns)
    events = analyzed_events(ns)
    invalidations = invalidated(ns)
    assert set(rows) == set(submitted)
    assert {i: r for i, (_, r) in rows.items()} == submitted  # each row holds its submitted run
    assert set(events) == set(submitted.items())
    assert set(invalidations) == set(submitted)
    dup_events = sum(n - 1 for n in Counter(events).values())
    dup_invalidations = sum(n - 1 for n in Counter(invalidations).values())
    assert not log_has(ns, "Traceback")
    report("kill_9_chaos", images=N, kills=kills, duplicate_analyzed_events=dup_events,
           duplicate_invalidations=dup_invalidations)
