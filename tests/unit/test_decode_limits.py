"""Every decode in a worker is bounded (issue 15, items 2 and 6).

* The model stages decode only what preprocess produced: the bytes at the derivative's URI (which may
  be the user's own upright JPEG, served as its own derivative, in ``uploads/<user>/``) must have the
  recorded SHA-256, be a JPEG of the recorded size within ``max_pixels``, fit the worker's one decode
  budget and decode within ``decode_timeout_s``; anything else fails that image with a code,
  undecoded, not dead-lettered, and the rest of the batch goes on.
* Pages and frames are counted from the file's structure, never past ``max_frames`` + 1 (Pillow's
  ``n_frames`` walks a TIFF's pages quadratically: 100k pages took over a minute).
* Preprocess's decodes have the same wall-clock limit, and Pillow's own pixel guard stays on.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
import time
from types import SimpleNamespace

import pytest
import structlog
from PIL import Image

from lensflow.agents.preprocess import Limits, prepare
from lensflow.streams.errors import StageFailure
from lensflow.streams.observability import Metrics
from lensflow.streams.pixel import PixelStage
from lensflow.streams.runner import Item
from lensflow.streams.settings import Settings
from tests.bombs import jpeg, jpeg_claiming, many_frame_gif, many_page_tiff, png_bomb, png_header_only

MiB = 2**20


def wait_until(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# --- the model stages' derivative reads -------------------------------------------------------------

class Storage:
    """uri -> bytes, as the storage layer reads them."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def read(self, uri: str, max_bytes: int) -> bytes:
        if len(self.files[uri]) > max_bytes:
            raise StageFailure("too_large", uri)
        return self.files[uri]


class Model:
    ref = {"name": "fake", "version": "1", "sha256": None}

    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def load(self) -> None:
        pass

    def warmup(self, img) -> None:
        pass

    def predict(self, images):
        self.seen += [im.size for im in images]
        return [None] * len(images)


class Worker:
    """One pixel stage (``scene``) on a worker context of its own: real settings, metrics and runner
    types, a dict for storage, a model that records what it was given."""

    def __init__(self, monkeypatch, **settings):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the worker sets it: restored after
        self.storage = Storage()
        app = SimpleNamespace(on_partitions_revoked=SimpleNamespace(connect=lambda fn: None))
        self.ctx = SimpleNamespace(settings=Settings(_env_file=None, **settings), log=structlog.get_logger("test"),
                                   app=app, metrics=Metrics(), storage=self.storage)
        self.model = Model()
        self.stage = PixelStage(self.ctx, "scene", model=lambda: self.model, outputs={"scene": lambda pred, info: {}})
        self.stage.load()

    def store(self, name: str, data: bytes, size: tuple[int, int] | None = None, sha256: str | None = "of-data") -> dict:
        """``data`` stored at ``name``, and the ImagePrepared record preprocess would have published."""
        uri = f"file:///storage/uploads/u1/{name}"
        self.storage.files[uri] = data
        if size is None:
            size = Image.open(io.BytesIO(data)).size
        return {"image_id": name, "user_id": "u1", "run_id": "r1", "status": "ok", "uri": uri,
                "derivative_sha256": hashlib.sha256(data).hexdigest() if sha256 == "of-data" else sha256,
                "width": size[0], "height": size[1], "original_width": size[0], "original_height": size[1],
                "expected_stages": ["scene"]}

    def run(self, *records: dict) -> dict[str, tuple[str | None, bool]]:
        """image id -> (error code or None, dead-lettered) of one batch of ``records``."""
        outcomes = asyncio.run(self.stage.process([Item(None, "ImagePrepared", r) for r in records]))
        out = {}
        for rec, outcome in zip(records, outcomes):
            (output,) = outcome.outputs
            error = output.record["error"]
            out[rec["image_id"]] = (error["code"] if error else None, outcome.dead_letter is not None)
        return out


def png(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_a_derivative_replaced_after_preprocess_is_never_decoded(monkeypatch):
    """An upright JPEG is its own derivative, in the user's folder: replaced after preprocess (here by
    a PNG), the model stage must refuse it from its hash, not decode what is there now."""
    w = Worker(monkeypatch)
    good = w.store("good.jpg", jpeg(64, 48))
    swapped = w.store("upright.jpg", jpeg(80, 60))
    w.storage.files[swapped["uri"]] = png()  # the user's file, replaced since
    got = w.run(good, swapped)
    assert got == {"good.jpg": (None, False), "upright.jpg": ("derivative_changed", False)}
    assert w.model.seen == [(64, 48)]  # the model never saw the swapped file


def test_a_derivative_that_is_not_a_jpeg_or_has_no_recorded_hash_is_not_decoded(monkeypatch):
    w = Worker(monkeypatch)
    forged = w.store("forged.png", png())  # a record whose hash names a PNG: derivatives are JPEGs
    unhashed = w.store("unhashed.jpg", jpeg(64, 48), sha256=None)  # nothing to verify against
    assert w.run(forged, unhashed) == {"forged.png": ("derivative_changed", False),
                                       "unhashed.jpg": ("derivative_changed", False)}
    assert w.model.seen == []


def test_a_derivative_of_another_size_or_over_the_pixel_cap_is_not_decoded(monkeypatch):
    w = Worker(monkeypatch)
    resized = w.store("resized.jpg", jpeg(128, 96), size=(64, 48))  # hash matches, the record's size does not
    assert w.run(resized) == {"resized.jpg": ("derivative_changed", False)}
    small = Worker(monkeypatch, max_pixels=2000)  # 3072 pixels: over lensflow's cap, under Pillow's (twice it)
    assert small.run(small.store("big.jpg", jpeg(64, 48), size=(64, 48))) == {"big.jpg": ("too_many_pixels", False)}
    assert w.model.seen == small.model.seen == []


def test_a_derivative_too_big_for_the_decode_budget_fails_undecoded(monkeypatch):
    """The header says 8000x6000 (~200 MB decoded, in a 64 MiB budget): refused before decoding."""
    w = Worker(monkeypatch, decode_memory_mb=64)
    huge = w.store("huge.jpg", jpeg_claiming(8000, 6000), size=(8000, 6000))
    good = w.store("good.jpg", jpeg(64, 48))
    assert w.run(huge, good) == {"huge.jpg": ("over_memory_budget", False), "good.jpg": (None, False)}


def test_a_slow_derivative_decode_fails_with_decode_timeout_and_frees_its_budget_later(monkeypatch):
    w = Worker(monkeypatch, decode_timeout_s=0.01)
    slow = w.store("slow.jpg", jpeg(6000, 4000, progressive=True))  # ~0.1 s to decode here
    t0 = time.monotonic()
    assert w.run(slow) == {"slow.jpg": ("decode_timeout", False)}
    assert time.monotonic() - t0 < 2
    budget = w.ctx.decode_budget  # the abandoned decode holds its reservation until it ends, then frees it
    assert wait_until(lambda: budget.used == 0)


def test_the_model_stages_and_preprocess_share_one_decode_budget(monkeypatch):
    """One budget per worker process: a derivative waits for the memory preprocess's decodes hold,
    and gives up at its wall-clock limit without ever being admitted."""
    from lensflow.agents.preprocess import Preprocess
    from lensflow.streams.budget import decode_budget

    w = Worker(monkeypatch, decode_timeout_s=0.3)
    budget = decode_budget(w.ctx)
    assert Preprocess(w.ctx).budget is budget and w.stage.cache.limits.budget is budget
    photo = w.store("photo.jpg", jpeg(640, 480))
    with budget.reserve(budget.total - MiB):  # preprocess's decodes hold all but 1 MiB
        assert w.run(photo) == {"photo.jpg": ("decode_timeout", False)}
        assert budget.waiting == 0 and budget.used == budget.total - MiB  # the abandoned read never got in
    assert w.run(w.store("photo2.jpg", jpeg(640, 480))) == {"photo2.jpg": (None, False)}


# --- pages and frames ---------------------------------------------------------------------------------

LIMITS = dict(max_bytes=50 * MiB, max_pixels=100_000_000, max_side=1600, jpeg_quality=85,
              formats=["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])


def limits(**settings) -> Limits:
    return Limits.from_settings(Settings(_env_file=None, **settings))


def test_a_100k_page_tiff_fails_fast_with_too_many_frames():
    """~11 MB, 100k pages: Pillow's n_frames took over a minute to count them; the cap answers at once."""
    data = many_page_tiff(100_000)
    t0 = time.monotonic()
    out = prepare(data, limits())
    elapsed = time.monotonic() - t0
    assert (out.error and out.error.code, elapsed < 2) == ("too_many_frames", True), elapsed
    few = prepare(many_page_tiff(3), limits())  # a few pages: the first is analysed
    assert few.error is None and (few.fields["width"], few.fields["height"]) == (64, 48)


def test_gif_and_apng_frames_are_capped():
    t0 = time.monotonic()
    out = prepare(many_frame_gif(20_000), limits())
    assert (out.error and out.error.code, time.monotonic() - t0 < 2) == ("too_many_frames", True)
    frames = [Image.new("RGB", (40, 30), (20 * i, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])  # APNG: its count is in the header
    apng = prepare(buf.getvalue(), limits(max_frames=2))
    assert apng.error is not None and apng.error.code == "too_many_frames"
    assert prepare(many_frame_gif(2), limits(max_frames=2)).error is None


def test_frame_counts_agree_with_pillow_and_stop_past_the_limit():
    from lensflow.agents.preprocess import count_frames

    frames = [Image.new("RGB", (40, 30), (30 * i, 0, 0)) for i in range(7)]
    made = {}
    for fmt, kw in [("TIFF", {}), ("TIFF", {"compression": "tiff_deflate"}), ("GIF", {"duration": 40, "loop": 0, "comment": b"c"}),
                    ("PNG", {}), ("WEBP", {"lossless": True})]:
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], **kw)
        made[f"{fmt} {kw}"] = (fmt, buf.getvalue())
    made["tiff bomb"] = ("TIFF", many_page_tiff(50))
    made["gif bomb"] = ("GIF", many_frame_gif(50))
    for name, (fmt, data) in made.items():
        img = Image.open(io.BytesIO(data))
        assert count_frames(img, fmt, data, 10_000) == Image.open(io.BytesIO(data)).n_frames, name
    big = many_page_tiff(100_000)
    assert count_frames(Image.open(io.BytesIO(big)), "TIFF", big, 10) == 11  # counted no further than the limit + 1


# --- preprocess's wall-clock limit, the budget's deadline, Pillow's own guard ----------------------------

def test_a_slow_decode_in_preprocess_fails_with_decode_timeout_and_frees_its_budget_later():
    from lensflow.streams.budget import MemoryBudget

    budget = MemoryBudget(1024 * MiB, malloc_mmap_threshold=None)
    data = png_bomb(4000, 4000, "RGBA")  # ~0.3 s to prepare here
    t0 = time.monotonic()
    out = prepare(data, limits(decode_timeout_s=0.02), budget)
    assert (out.error and out.error.code, time.monotonic() - t0 < 0.2) == ("decode_timeout", True)
    assert out.fields["sha256"] == hashlib.sha256(data).hexdigest() and out.derivative is None
    assert wait_until(lambda: budget.used == 0)  # the abandoned decode ran to its end, then freed its part


def test_an_abandoned_decode_still_waiting_for_the_budget_never_starts():
    from lensflow.streams.budget import MemoryBudget, run_within

    budget = MemoryBudget(100 * MiB, malloc_mmap_threshold=None)
    started = threading.Event()

    def decode():
        with budget.reserve(50 * MiB):
            started.set()

    with budget.reserve(90 * MiB):
        with pytest.raises(StageFailure) as failed:
            run_within(0.05, decode, what="test decode")
        assert failed.value.code == "decode_timeout"
        time.sleep(0.1)  # past the deadline: the waiting reservation withdraws
    time.sleep(0.1)
    assert not started.is_set() and budget.used == 0 and budget.waiting == 0


def test_pillows_own_pixel_guard_stays_on(monkeypatch):
    """lensflow's checks come first; Pillow's cap (twice MAX_IMAGE_PIXELS) stays on behind them for every
    Image.open in the process, set from max_pixels by the worker, and maps to too_many_pixels."""
    import lensflow.agents.preprocess  # noqa: F401  (it used to turn Pillow's guard off for the process)

    assert Image.MAX_IMAGE_PIXELS is not None
    Worker(monkeypatch, max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(jpeg(64, 48)))  # 3072 pixels: over twice the cap, in any caller
    out = prepare(png_header_only(30000, 30000), Limits(**LIMITS))
    assert out.error is not None and out.error.code == "too_many_pixels"
