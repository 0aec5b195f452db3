"""The stream unharmed by the read side: while 200 images flow through every stage, a client runs 20
searches a second for 60 s against the read service (which, on the local default, lives in the same
worker, on its own thread and event loop). Every image completes and every search answers 200. The
stream's throughput with searches and without them (measured just before, on the same worker, with
other images of the same kind) is reported: the issue's target, within 10 %, is a speed target, and
speed targets live in benchmarks, not in tests (README "Benchmarks"; bench/RESULTS.md has the runs).
What the test asserts of it is that the searches never stall the stream: it keeps at least half its
speed (a read service blocking the stream's event loop, or holding the GIL in a store call, would
take it to a crawl)."""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import pytest

from .promise import fresh_namespace, photos, report, results_of, submit_waiting

pytestmark = pytest.mark.integration

STAGES = "metadata,objects,text,faces,scene,embedding,describe,safety"
IMAGES = 200
SEARCHES_PER_S = 20
SEARCH_S = 60
WORDS = ["photo", "a red ball", "circles", "outdoor", "a picture of shapes", "colourful", "text", "ball",
         "orange", "blue sky", "balloon", "a plate", "traffic light", "pattern", "sun"]


@pytest.fixture()
def ns(stack, models, tmp_path):
    with fresh_namespace(stack, tmp_path / "data", stages=STAGES, api_user_rate=200, api_user_concurrency=32) as ns:
        yield ns


def throughput(results: dict[str, dict]) -> float:
    """Images a second of one ``submit --wait`` run: all of them over the time the last one took."""
    return len(results) / max(r["seconds"] for r in results.values())


def flow(ns, files: list[str]) -> dict[str, dict]:
    results = results_of(submit_waiting(ns, "loader", files, timeout=900), timeout=1000)
    assert len(results) == len(files) and {r["status"] for r in results.values()} == {"complete"}, \
        {i: (r["status"], r.get("error")) for i, r in results.items() if r["status"] != "complete"}
    return results


class Searcher(threading.Thread):
    """20 searches a second, on a schedule (not back to back), for ``SEARCH_S`` seconds: text, tag,
    like and person, one keep-alive connection per in-flight search."""

    def __init__(self, ns, token: str, like: str):
        super().__init__(daemon=True)
        self.ns, self.like = ns, like
        self.headers = {"Authorization": f"Bearer {token}"}
        self.answers: list[tuple[str, int | None, float]] = []
        self.lock = threading.Lock()
        self.clients = threading.local()

    def one(self, i: int) -> None:
        kind = ("text", "tag", "like", "person", "text")[i % 5]
        params = {"text": {"text": WORDS[i % len(WORDS)] + f" {i % 40}"}, "tag": {"tag": ("outdoor", "indoor", "ball")[i % 3]},
                  "like": {"like": self.like}, "person": {"person": "Nobody Known"}}[kind]
        client = getattr(self.clients, "c", None) or httpx.Client(timeout=30)
        self.clients.c = client
        t0 = time.monotonic()
        try:
            status = client.get(f"{self.ns.api}/v1/search", params=params, headers=self.headers).status_code
        except httpx.HTTPError:
            status = None
        with self.lock:
            self.answers.append((kind, status, time.monotonic() - t0))

    def run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            for i in range(SEARCHES_PER_S * SEARCH_S):
                delay = start + i / SEARCHES_PER_S - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(self.one, i)


def test_searches_while_200_images_flow_leave_every_image_complete_and_the_stream_running(ns, tmp_path):
    ns.start_worker(timeout=300)
    warm = flow(ns, photos(tmp_path / "warm", 12, seed=30))  # models loaded, caches warm
    token = ns.token("loader")
    quiet = flow(ns, photos(tmp_path / "quiet", IMAGES, seed=31))

    searcher = Searcher(ns, token, like=next(iter(warm)))
    searcher.start()
    loaded = flow(ns, photos(tmp_path / "loaded", IMAGES, seed=32))
    searcher.join(SEARCH_S + 60)
    assert not searcher.is_alive(), "the searches did not finish"

    answers = searcher.answers
    assert len(answers) == SEARCHES_PER_S * SEARCH_S
    failed = [a for a in answers if a[1] != 200]
    assert not failed, f"{len(failed)} searches did not answer 200: {failed[:5]}"
    before, during = throughput(quiet), throughput(loaded)
    stream_s = max(r["seconds"] for r in loaded.values())
    latency = {kind: round(1000 * statistics.median(a[2] for a in answers if a[0] == kind), 1)
               for kind in ("text", "tag", "like", "person")}
    p95 = round(1000 * sorted(a[2] for a in answers)[int(0.95 * len(answers))], 1)
    report("api_searches_during_the_stream", images=IMAGES, images_per_s_without_searches=round(before, 2),
           images_per_s_with_searches=round(during, 2), ratio=round(during / before, 3),
           searches=len(answers), searches_while_images_flowed=min(len(answers), int(stream_s * SEARCHES_PER_S)),
           stream_s=round(stream_s, 1), search_p50_ms_by_kind=latency, search_p95_ms=p95)
    assert during >= 0.5 * before, (f"the stream slowed from {before:.2f} to {during:.2f} images/s under "
                                    f"{SEARCHES_PER_S} searches a second: stalled by the read side")
