"""Dead-letter round trip: originals served over http by a server that answers 503 are an outage; with
``on_outage=deadletter`` they fail with ``fetch_failed`` once ``retry_deadline_s`` has passed and are
dead-lettered; once the server is mended,
``lensflow deadletter replay`` runs each of them again as a new run that completes. Each (image, run)
is announced once on images.analyzed, each image keeps one row, and replaying the same dead letters
again is idempotent (same run ids, no new events)."""

from __future__ import annotations

import collections
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from .conftest import Namespace
from .helpers import read_topic, wait_for

pytestmark = pytest.mark.integration
USER = "u1"
N = 8
FETCH_RETRIES = 2


class Originals:
    """A small http server for originals: 503 while ``broken``, else the files under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.broken = False
        self.requests: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        originals = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                with originals.lock:
                    originals.requests[path] += 1
                if originals.broken:
                    body = b"storage is having a bad day\n"
                    self.send_response(503)
                else:
                    file = (originals.root / path.lstrip("/")).resolve()
                    if not file.is_relative_to(originals.root.resolve()) or not file.is_file():
                        self.send_error(404)
                        return
                    body = file.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, path: str) -> int:
        with self.lock:
            return self.requests[path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def small_jpeg(i: int) -> bytes:
    """A baseline JPEG within max_side and without EXIF (orientation 1): preprocess reuses it as its own
    derivative, so nothing is ever written back to the http root."""
    buf = io.BytesIO()
    Image.new("RGB", (320 + 8 * i, 240), ((i * 53) % 255, (i * 97) % 255, (i * 29) % 255)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("http-originals")
    (root / "uploads" / USER).mkdir(parents=True)
    for i in range(N):
        (root / "uploads" / USER / f"img{i}.jpg").write_bytes(small_jpeg(i))
    server = Originals(root)
    yield server
    server.close()


@pytest.fixture(scope="module")
def ns(stack, tmp_path_factory, originals):
    data_dir = tmp_path_factory.mktemp("lensflow-deadletter")
    ns = Namespace(stack, data_dir, join_timeout_s=4, join_tick_interval_s=1,
                   storage_roots=f"{originals.url},file://{data_dir}/storage",
                   fetch_retries=FETCH_RETRIES, retry_base_s=0.05, retry_max_s=0.2, retry_deadline_s=1,
                   on_outage="deadletter")
    ns.cli("init")
    ns.start_worker()
    yield ns
    ns.close()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def analyzed_pairs(ns) -> collections.Counter:
    return collections.Counter((rec["image_id"], rec["run_id"]) for _, rec in read_topic(ns.topic("images.analyzed")))


def test_deadletter_round_trip(ns, originals):
    uris = [f"{originals.url}/uploads/{USER}/img{i}.jpg" for i in range(N)]
    paths = {uri: f"/uploads/{USER}/img{i}.jpg" for i, uri in enumerate(uris)}

    # --- 1. storage answers 503: an outage; past retry_deadline_s every image fails with fetch_failed -----
    originals.broken = True
    proc = ns.cli("submit", "--user", USER, "--wait", "--json", "--timeout", "180", *uris, check=False)
    assert proc.returncode == 1, f"submit should report failed images (exit 1):\n{proc.stdout}\n{proc.stderr}"
    failed = {r["file"]: r for r in json_lines(proc.stdout)}
    assert sorted(failed) == sorted(uris), proc.stdout
    for uri, r in failed.items():
        assert r["status"] == "failed" and r["error"]["code"] == "fetch_failed", r
    image_of = {uri: r["image_id"] for uri, r in failed.items()}
    ids = sorted(image_of.values())
    assert len(set(ids)) == N
    tried = {paths[u]: originals.count(paths[u]) for u in uris}
    assert all(n >= FETCH_RETRIES for n in tried.values()), \
        f"expected at least {FETCH_RETRIES} attempts per image (the batch is retried too), the server saw {tried}"

    failed_runs = {}
    for row in ns.cql.execute("SELECT image_id, user_id, run_id, status, error_code FROM images"):
        assert row.status == "failed" and row.error_code == "fetch_failed" and row.user_id == USER, row
        failed_runs[row.image_id] = row.run_id
    assert sorted(failed_runs) == ids

    listed = json_lines(ns.cli("deadletter", "list", "--json").stdout)
    assert sorted(x["image_id"] for x in listed) == ids, listed
    for x in listed:
        assert x["code"] == "fetch_failed" and x["stage"] == "preprocess", x
        assert x["run_id"] == failed_runs[x["image_id"]] and x["user_id"] == USER, x

    # --- 2. storage mended: replay runs every image again, as a new run, and it completes ---------------
    originals.broken = False
    proc = ns.cli("deadletter", "replay", "--wait", "--json", "--timeout", "180", check=False)
    assert proc.returncode == 0, f"replay --wait exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n{ns.log_tail()}"
    lines = json_lines(proc.stdout)
    planned = [x for x in lines if x["status"] == "replayed"]
    results = [x for x in lines if x["status"] != "replayed"]
    assert sorted(x["image_id"] for x in planned) == ids, lines
    assert sorted(x["id"] for x in planned) == sorted(x["id"] for x in listed)
    replay_runs = {x["image_id"]: x["run_id"] for x in planned}
    for image_id, run_id in replay_runs.items():
        assert run_id != failed_runs[image_id] and run_id.startswith(failed_runs[image_id] + "~replay-"), run_id
    assert sorted(x["image_id"] for x in results) == ids, lines
    for r in results:
        assert r["status"] == "complete" and r["run_id"] == replay_runs[r["image_id"]] and r["error"] is None, r
    assert {paths[u]: originals.count(paths[u]) for u in uris} == {p: n + 1 for p, n in tried.items()}

    def check_stores():
        rows = list(ns.cql.execute("SELECT image_id, user_id, run_id, status, analysis_version FROM images"))
        assert sorted(r.image_id for r in rows) == ids
        for r in rows:
            assert r.status == "complete" and r.user_id == USER and r.run_id == replay_runs[r.image_id], r
        runs = collections.defaultdict(set)
        for r in ns.cql.execute("SELECT image_id, run_id, status FROM analysis_results"):
            runs[r.image_id].add((r.run_id, r.status))
        assert dict(runs) == {i: {(failed_runs[i], "failed"), (replay_runs[i], "complete")} for i in ids}
        return {r.image_id: r.analysis_version for r in rows}

    versions = check_stores()
    expected_pairs = {(i, failed_runs[i]) for i in ids} | {(i, replay_runs[i]) for i in ids}
    pairs = analyzed_pairs(ns)
    assert set(pairs) == expected_pairs, pairs
    assert all(n == 1 for n in pairs.values()), {k: n for k, n in pairs.items() if n > 1}

    # --- 3. the same dead letters replayed again: the same runs, rewritten idempotently, not announced ---
    proc = ns.cli("deadletter", "replay", "--json")
    again = {x["image_id"]: x["run_id"] for x in json_lines(proc.stdout) if x["status"] == "replayed"}
    assert again == replay_runs, "replaying the same dead letters must give the same run ids"
    wait_for(lambda: all(originals.count(paths[u]) == tried[paths[u]] + 2 for u in uris), 120,
             message=f"the second replay to fetch every original (server saw {dict(originals.requests)})")
    time.sleep(8)  # the join completes metadata-only runs at once; give it (and any stray event) time to land
    assert check_stores() == versions, "a replay of a stored run must keep its analysis_version"
    pairs = analyzed_pairs(ns)
    assert set(pairs) == expected_pairs, f"new (image, run) pairs on images.analyzed: {set(pairs) - expected_pairs}"
    assert all(n == 1 for n in pairs.values()), \
        f"(image, run) pairs announced more than once: { {k: n for k, n in pairs.items() if n > 1} }"
    log = ns.log_path.read_text()
    assert "Traceback" not in log and '"code": "internal"' not in log
