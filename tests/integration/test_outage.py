"""The promise under a store outage: Cassandra frozen (SIGSTOP) for 60 s while 200 images flow with
every stage on, and Cassandra stopped and started again. Nothing is lost and nothing is dead-lettered
for the outage: the runner retries the join's batch (un-acked) until Cassandra answers again."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from .conftest import LENSFLOW
from .promise import (EVERY_STAGE, dead_letters, fresh_namespace, photos, report, results_of, service_pid, stored,
                      submit, submit_waiting, wait_stored)

pytestmark = pytest.mark.integration


@pytest.fixture()
def ns(stack, tmp_path):
    with fresh_namespace(stack, tmp_path / "data", retry_max_s=5) as ns:
        yield ns


def test_cassandra_frozen_for_60s_with_every_stage_on(ns, models, tmp_path):
    files = photos(tmp_path / "in", 200, seed=1)
    ns.start_worker()
    pid = service_pid(ns.env, "cassandra")
    proc = submit_waiting(ns, "outage", files, stages=EVERY_STAGE, timeout=900)
    time.sleep(2)
    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        time.sleep(60)
        assert ns.worker.poll() is None, "the worker died during the outage:\n" + ns.log_tail()
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    during = len(stored(ns))
    results = results_of(proc, timeout=900)
    settled = time.monotonic()
    statuses = {r["status"] for r in results.values()}
    assert len(results) == 200 and statuses == {"complete"}, {i: r for i, r in results.items() if r["status"] != "complete"}
    rows = stored(ns)
    assert set(rows) == set(results) and {s for s, _ in rows.values()} == {"complete"}
    assert dead_letters(ns) == []
    assert ns.worker.poll() is None, "the worker restarted"
    report("cassandra_sigstop_60s", images=200, stored_before_resume=during,
           settle_after_resume_s=round(settled - resumed, 1), total_s=round(settled - frozen_at + 2, 1))


def test_cassandra_stopped_and_started_again(ns, tmp_path):
    files = photos(tmp_path / "in", 120, size=(640, 480), seed=2)
    ns.start_worker()
    ids = submit(ns, "restart", files[:20])
    wait_stored(ns, ids, 120)
    pid = service_pid(ns.env, "cassandra")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            time.sleep(0.5)
        except ProcessLookupError:
            break
    stopped = time.monotonic()
    ids2 = submit(ns, "restart", files[20:])
    time.sleep(5)
    assert ns.worker.poll() is None, "the worker died while Cassandra was down:\n" + ns.log_tail()
    up = subprocess.run(LENSFLOW + ["stack", "up"], env=ns.env, text=True, capture_output=True, timeout=600)
    assert up.returncode == 0, up.stderr[-2000:]
    started = time.monotonic()
    wait_stored(ns, ids2, 300)
    settled = time.monotonic()
    assert dead_letters(ns) == []
    assert ns.worker.poll() is None, "the worker restarted"
    report("cassandra_stop_start", images=len(ids2), cassandra_down_s=round(started - stopped, 1),
           settle_after_restart_s=round(settled - started, 1))
