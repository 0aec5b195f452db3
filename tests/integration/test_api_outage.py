"""The read service under a store outage: Cassandra frozen (SIGSTOP) for 30 s while images flow and a
user searches every second. The worker's and the read service's ``/healthz`` answer within 1 s
throughout (the service's store calls run off its event loop, on a bounded pool, and it runs on a
thread and loop of its own in the worker), every search answers in bounded time (503
with a JSON error while Cassandra is frozen, never a bare 500), the CLI says to try again, and every
image completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from .conftest import LENSFLOW
from .promise import (dead_letters, fresh_namespace, photos, report, results_of, service_pid, submit, submit_waiting,
                      wait_stored)

pytestmark = pytest.mark.integration

FROZEN_S = 30
#: the read service's store deadline (api/service.py STORE_TIMEOUT_S) plus slack for 2 busy cores
SEARCH_BOUND_S = 14.0


@pytest.fixture()
def ns(stack, tmp_path):
    # a search a second, each held up to its 10 s deadline by the frozen store: up to 10 in flight at once
    with fresh_namespace(stack, tmp_path / "data", retry_max_s=5, api_user_concurrency=32) as ns:
        yield ns


def test_search_while_cassandra_is_frozen(ns, tmp_path):
    files = photos(tmp_path / "in", 40, size=(640, 480), seed=7)
    ns.start_worker()
    base = f"http://127.0.0.1:{ns.env['LENSFLOW_WEB_PORT']}"
    auth = {"Authorization": f"Bearer {ns.token('searcher')}"}
    wait_stored(ns, submit(ns, "searcher", files[:10]), 120)
    params = {"tag": "nothing-tagged-so"}
    before = httpx.get(f"{ns.api}/v1/search", params=params, headers=auth, timeout=30)
    assert before.status_code == 200 and before.json() == {"results": [], "next_cursor": None}, before.text

    flowing = [submit_waiting(ns, "searcher", files[10:25], timeout=600)]  # and 15 more while Cassandra is frozen
    time.sleep(1)
    pid = service_pid(ns.env, "cassandra")
    searches: list[tuple[float, float, int | None, str]] = []  # (sent, seconds, status, body)
    probes: list[tuple[float, int | None]] = []  # (seconds, status)
    cli: dict = {}
    lock = threading.Lock()

    def search() -> None:
        t0 = time.monotonic()
        try:
            r = httpx.get(f"{ns.api}/v1/search", params=params, headers=auth, timeout=60)
            status, body = r.status_code, r.text
        except httpx.HTTPError as exc:
            status, body = None, repr(exc)
        with lock:
            searches.append((t0, time.monotonic() - t0, status, body))

    def cli_search() -> None:
        cli["proc"] = subprocess.run(LENSFLOW + ["search", "--user", "searcher", "--tag", "x", "--json"], env=ns.env,
                                     text=True, capture_output=True, timeout=120)

    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    threads = []
    try:
        next_search = frozen_at
        while time.monotonic() - frozen_at < FROZEN_S:
            if time.monotonic() >= next_search:
                threads.append(threading.Thread(target=search))
                threads[-1].start()
                next_search += 1.0
            if "started" not in cli and time.monotonic() - frozen_at > 5:
                cli["started"] = True
                threads.append(threading.Thread(target=cli_search))
                threads[-1].start()
                flowing.append(submit_waiting(ns, "searcher", files[25:], timeout=600))
            for url in (f"{base}/healthz", f"{ns.api}/healthz"):
                t0 = time.monotonic()
                try:
                    status = httpx.get(url, timeout=5).status_code
                except httpx.HTTPError:
                    status = None
                probes.append((time.monotonic() - t0, status))
            time.sleep(0.25)
        assert ns.worker.poll() is None, "the worker died during the outage:\n" + ns.log_tail()
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    for t in threads:
        t.join(90)

    slow_probes = [p for p in probes if p[0] >= 1.0 or p[1] != 200]
    assert not slow_probes, (f"{len(slow_probes)} of {len(probes)} /healthz probes took 1 s or more or did not answer 200 "
                             f"while searches ran against a frozen Cassandra: {slow_probes[:10]}")
    during = [s for s in searches if s[0] + s[1] < resumed]  # answered before Cassandra was resumed
    assert len(searches) >= FROZEN_S - 2 and len(during) >= FROZEN_S - 15, len(during)
    for sent, took, status, body in searches:
        assert status in (200, 503) and took < SEARCH_BOUND_S, (
            f"a search sent {sent - frozen_at:.0f} s into the freeze answered {status} after {took:.1f} s: {body[:300]}")
    unavailable = [s for s in during if s[2] == 503]
    assert len(unavailable) >= len(during) - 2, [(round(s[1], 1), s[2]) for s in during]
    assert unavailable and all("Cassandra" in json.loads(s[3])["error"] for s in unavailable), unavailable[:1]

    proc = cli["proc"]
    assert proc.returncode == 2 and proc.stdout == "", f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "try again" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    during_freeze = results_of(flowing[1], timeout=600)
    results = {**results_of(flowing[0], timeout=600), **during_freeze}
    settled = time.monotonic()
    # submitted 5 s into the freeze, stored once Cassandra answers again: they flowed through the outage
    assert min(r["seconds"] for r in during_freeze.values()) > 10, sorted(r["seconds"] for r in during_freeze.values())
    assert len(results) == 30 and {r["status"] for r in results.values()} == {"complete"}, \
        {i: r for i, r in results.items() if r["status"] != "complete"}
    assert dead_letters(ns) == []
    after = httpx.get(f"{ns.api}/v1/search", params=params, headers=auth, timeout=30)
    assert after.status_code == 200 and after.json() == {"results": [], "next_cursor": None}, after.text
    log = ns.log_path.read_text(errors="replace")
    assert "Thread keepalive is not responding" not in log, ns.log_tail()
    assert ns.worker.poll() is None, "the worker restarted"
    report("api_cassandra_sigstop_30s", searches=len(searches), searches_503=len(unavailable),
           slowest_search_s=round(max(s[1] for s in searches), 1),
           slowest_probe_s=round(max(p[0] for p in probes), 3), probes=len(probes),
           images_submitted_during_freeze=len(during_freeze), settle_after_resume_s=round(settled - resumed, 1))
