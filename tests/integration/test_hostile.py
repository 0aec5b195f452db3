"""Hostile input under a memory limit, and a backlog past the join timeout.

* A worker with a hard 2 GiB address-space limit gets decompression bombs just under the pixel
  limit (several in one batch), truncated and corrupt files, garbage bytes, a record with an unknown
  schema fingerprint on an input topic, and an embedding of the wrong dimension. Each fails with a
  code or reaches the dead-letter topic; good images submitted after them complete; the worker never
  restarts.
* A backlog of images waiting for a model stage, with a 1 s join timeout: every image still ends
  complete, with its caption, and one images.analyzed event per run.
* Under the same 2 GiB limit, with a model stage: an upright JPEG (its own derivative, in the user's
  folder) replaced after preprocess by a 30000x30000 PNG, then re-analysed, fails that stage with
  ``derivative_changed``, undecoded; a 100k-page TIFF fails within seconds with ``too_many_frames``;
  good images after both complete; the worker never restarts.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from lensflow.streams.codec import Codec
from lensflow.streams.records import now
from tests.bombs import many_page_tiff, png_bomb
from tests.conftest import PHOTOS

from .conftest import Namespace
from .helpers import wait_for
from .promise import Worker, analyzed_events, dead_letters, log_has, photos, report, stored, submit, wait_stored

pytestmark = pytest.mark.integration
GIB = 2**30


def produce(ns, topic: str, key: bytes, value: bytes) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": "127.0.0.1:9092", "partitioner": "murmur2_random"})
    p.produce(ns.topic(topic), key=key, value=value)
    assert p.flush(30) == 0


@pytest.fixture()
def ns(stack, tmp_path):
    ns = Namespace(stack, tmp_path / "data", join_timeout_s=4, join_tick_interval_s=1)
    ns.cli("init")
    yield ns
    ns.close()


def test_bombs_garbage_and_bad_records_under_a_2_gib_limit(ns, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    files = {}
    for i in range(4):  # 16 MP RGBA bombs, ~64 MB each decoded and ~200 MB at their peak, in one batch
        files[f"bomb16_{i}.png"] = png_bomb(4000, 4000, "RGBA", color=(i, 100, 200, 128))
    for i in range(2):  # 96 MP RGBA bombs, just under the 100 MP limit: ~1.2 GB each at their peak
        files[f"bomb96_{i}.png"] = png_bomb(12000, 8000, "RGBA", color=(i, 50, 60, 70))
    photo = (PHOTOS / "road_cars_canberra.jpg").read_bytes()
    files["truncated.jpg"] = photo[: len(photo) // 2]
    rng = random.Random(5)
    files["corrupt.jpg"] = photo[:600] + bytes(rng.randrange(256) for _ in range(20000))
    files["garbage.jpg"] = bytes(rng.randrange(256) for _ in range(5000))
    for name, data in files.items():
        (d / name).write_bytes(data)
    ns.start_worker(stages="preprocess,join", address_space=2 * GIB)
    pid = ns.worker.pid
    # garbage bytes and an unknown schema fingerprint on input topics
    produce(ns, "images.uploaded", b"garbage-1", bytes(rng.randrange(256) for _ in range(300)))
    produce(ns, "analysis.objects", b"unknown-fp", b"\xc3\x01" + b"\x13\x37" * 4 + b"\x02\x00")
    bad = submit(ns, "hostile", [str(d / n) for n in files])
    # an embedding of the wrong dimension for an image that expects one (no embedding stage runs here)
    target = submit(ns, "hostile", [str(PHOTOS / "cat_chelsea.png")], stages="embedding")
    (image_id, run_id), = target.items()
    wrong = {"image_id": image_id, "user_id": "hostile", "run_id": run_id, "stage": "embedding",
             "model": {"name": "test", "version": "1", "sha256": None}, "status": "ok", "error": None,
             "duration_ms": 1.0, "produced_at": now(), "vector_name": "visual", "dim": 1279, "vector": [0.5] * 1279}
    produce(ns, "analysis.embedding", image_id.encode(),
            Codec().encode("EmbeddingResult", wrong, topic=ns.topic("analysis.embedding")))
    rows = wait_stored(ns, list(bad) + [image_id], 300, status=None)
    errors = {r.image_id: r.error_code for r in ns.cql.execute("SELECT image_id, error_code FROM images")}
    by_name = {os.path.basename(n): errors[i] for i, n in zip(bad, [str(d / n) for n in files])}
    assert by_name["truncated.jpg"] == "undecodable" and by_name["corrupt.jpg"] == "undecodable"
    assert by_name["garbage.jpg"] == "not_an_image"
    for i in range(2):
        assert by_name[f"bomb96_{i}.png"] == "over_memory_budget", by_name
    for i in range(4):  # near-limit bombs that fit the budget are analysed, one batch at a time
        assert by_name[f"bomb16_{i}.png"] is None and rows[list(bad)[list(files).index(f"bomb16_{i}.png")]][0] == "complete"
    assert rows[image_id][0] == "failed" and errors[image_id] == "store_rejected"
    letters = dead_letters(ns)
    codes = Counter((dl["stage"], dl["error"]["code"]) for dl in letters)
    assert codes[("preprocess", "poison")] == 1 and codes[("join", "poison")] == 1, codes
    assert codes[("join", "store_rejected")] == 1, codes
    rejected = next(dl for dl in letters if dl["error"]["code"] == "store_rejected")
    # the dead letter carries every record the join held, so a replay can rebuild the image
    assert {i["topic"] for i in rejected["inputs"]} == {ns.topic(t) for t in ("images.prepared", "analysis.metadata",
                                                                             "analysis.embedding")}
    # good images after all that
    good = submit(ns, "hostile", photos(tmp_path / "good", 5, seed=9))
    wait_stored(ns, good, 120)
    assert ns.worker.poll() is None and ns.worker.pid == pid, "the worker restarted"
    assert not log_has(ns, "MemoryError") and not log_has(ns, "Traceback")


def stage_error(ns, image_id: str, stage: str) -> str | None:
    """The stored error of ``stage`` in the image's current run (``show --json``), e.g. "code: message"."""
    shown = json.loads(ns.cli("show", image_id, "--json").stdout)
    return (shown.get("stages") or {}).get(stage, {}).get("error")


def test_a_replaced_derivative_and_a_many_page_tiff_under_a_2_gib_limit(ns, tmp_path):
    """Issue 15, items 2 and 6. The model stage decodes only what preprocess recorded: the user's own
    upright JPEG, swapped for a 30000x30000 PNG (~1 MB, 0.9 GB as grey pixels, 3.6 GB as RGB: the
    old worker decoded it whole) is refused from its hash. A 100k-page TIFF (~11 MB; counting its pages
    took Pillow over a minute) fails within seconds. The worker, under a 2 GiB address-space limit,
    never restarts and goes on with good images."""
    upright = photos(tmp_path / "in", 1, seed=21)  # 800x600, orientation 1: served as its own derivative
    ns.start_worker(stages="preprocess,scene,join", address_space=2 * GIB)
    pid = ns.worker.pid
    first = submit(ns, "swapper", upright, stages="scene")
    (image_id, _), = first.items()
    wait_stored(ns, first, 180)
    row = ns.cql.execute("SELECT uri, source_uri FROM images WHERE image_id = %s", (image_id,)).one()
    assert row.uri == row.source_uri and "/uploads/swapper/" in row.uri, row  # the derivative is the user's file
    Path(unquote(urlparse(row.uri).path)).write_bytes(png_bomb(30000, 30000, "L"))

    proc = ns.cli("reanalyze", "--stage", "scene", "--user", "swapper", "--wait", "--json", "--timeout", "120")
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert line["image_id"] == image_id and line["status"] != "timeout", line
    error = stage_error(ns, image_id, "scene") or ""
    assert error.startswith("derivative_changed"), error
    assert not [dl for dl in dead_letters(ns) if dl["image_id"] == image_id]  # bad input: nothing to replay

    pages = tmp_path / "pages.tif"
    pages.write_bytes(many_page_tiff(100_000))
    t0 = time.monotonic()
    tiff = submit(ns, "swapper", [str(pages)])
    rows = wait_stored(ns, tiff, 60, status=None)
    elapsed = time.monotonic() - t0  # submit's own start and the store included
    (tiff_id,) = tiff
    code = ns.cql.execute("SELECT error_code FROM images WHERE image_id = %s", (tiff_id,)).one().error_code
    assert (rows[tiff_id][0], code) == ("failed", "too_many_frames") and elapsed < 20, (rows[tiff_id], code, elapsed)

    good = submit(ns, "swapper", photos(tmp_path / "good", 2, seed=22), stages="scene")
    wait_stored(ns, good, 120)
    assert ns.worker.poll() is None and ns.worker.pid == pid, "the worker restarted"
    assert not log_has(ns, "MemoryError") and not log_has(ns, "Traceback")
    report("hostile_derivative_and_pages", tiff_failed_in_s=round(elapsed, 1))


def test_backlog_past_the_join_timeout_completes_with_captions(stack, models, tmp_path):
    """The join sees every image at once (preprocess, describe and the join in one worker), while the
    objects stage, a worker of its own, works through a backlog many times the 1 s join timeout: no
    image may go partial for it, each gets its caption and one images.analyzed per run."""
    ns = Namespace(stack, tmp_path / "data", join_timeout_s=1, join_tick_interval_s=0.5)
    scene = None
    try:
        ns.cli("init")
        files = photos(tmp_path / "in", 300, size=(480, 360), seed=11)
        ns.start_worker(stages="preprocess,describe,join")
        scene = Worker(ns, "objects", "objects")
        scene.wait_ready()
        # preprocess hands all 300 to the join within a few seconds; objects (~13 images/s here) needs ~20 s more
        submitted = submit(ns, "backlog", files, stages="objects,describe")
        rows = wait_stored(ns, submitted, 600, status=None)
        statuses = Counter(s for s, _ in rows.values())
        assert statuses == {"complete": len(submitted)}, statuses
        captions = {r.image_id: r.caption for r in ns.cql.execute("SELECT image_id, caption FROM images")}
        assert all(captions[i] for i in submitted), [i for i in submitted if not captions[i]][:5]
        events = analyzed_events(ns)
        assert Counter(events) == Counter(submitted.items()), "one images.analyzed per (image, run)"
        report("backlog_past_join_timeout", images=len(submitted), join_timeout_s=1)
    finally:
        if scene is not None:
            scene.stop()
        ns.close()
