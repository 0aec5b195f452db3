"""preprocess: images.uploaded → images.prepared + analysis.metadata.

fetch the original (fenced to the storage roots) → sniff magic bytes → allow-list the format →
byte, pixel and frame limits (decompression bombs and many-page files are refused from the header
and the file's structure, before any decode) → EXIF metadata from the original → decode fully (a
truncated file fails here) → cap the long side → apply EXIF orientation → store a JPEG derivative
next to the original → publish. Everything from opening the original to encoding the derivative
runs under the worker's decode budget (memory) and ``decode_timeout_s`` (wall clock).

Speed (see bench/spine.py and bench/RESULTS.md): JPEGs are decoded with Pillow's ``draft`` at the
smallest DCT scale that still covers the target size (a 12 MP photo decodes at 1/2 or 1/4 scale),
resized with an antialiased bilinear filter, and transposed *after* the resize (on 4× fewer pixels).
An original that is already a JPEG within the size cap with orientation 1 is its own derivative:
no re-encode, no second file. Derivatives carry no EXIF (GPS stays in the original and in
analysis.metadata only).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import PIL
from PIL import Image

from lensflow.streams.avro_types import ImagePrepared, MetadataResult, ModelRef, StageError
from lensflow.streams.errors import ErrorCode, StageFailure, Verdict, classify, record_fault, retry_sync
from lensflow.streams.budget import MemoryBudget, decode_budget, run_within
from lensflow.streams.decode_cost import decode_cost
from lensflow.streams.records import Status, check_user_id, now, result
from lensflow.streams.runner import Item, Outcome, Output, Stage, run
from lensflow.streams.storage import derivative_url
from lensflow.streams.topology import PREPARED, UPLOADED, plan_for

from . import metadata as metadata_stage

STAGE = "preprocess"
MODEL = ModelRef(name="pillow-normalise", version=f"1+pillow{PIL.__version__}", sha256=None)

# lensflow enforces its own pixel limit (max_pixels) from the header, before decoding; Pillow's own
# (Image.MAX_IMAGE_PIXELS) stays on behind it, set to max_pixels by the worker (streams.budget.decode_budget).

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp", "TIFF": "image/tiff",
         "BMP": "image/bmp", "HEIF": "image/heif", "AVIF": "image/avif"}
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_PIL_FORMAT = {"JPEG": {"JPEG", "MPO"}, "PNG": {"PNG"}, "GIF": {"GIF"}, "WEBP": {"WEBP"}, "TIFF": {"TIFF"},
               "BMP": {"BMP", "DIB"}, "HEIF": {"HEIF"}, "AVIF": {"AVIF"}}


def sniff(data: bytes) -> str | None:
    """Format from magic bytes, never from a name or a claimed content type."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:2] == b"BM" and len(head) >= 26:
        return "BMP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis"):
            return "HEIF"
    return None


@dataclass
class Limits:
    max_bytes: int
    max_pixels: int
    max_side: int
    jpeg_quality: int
    formats: list[str]
    max_frames: int = 10_000
    decode_timeout_s: float | None = None  # None: no wall-clock limit (the worker always sets one)

    @classmethod
    def from_settings(cls, s) -> "Limits":
        return cls(s.max_bytes, s.max_pixels, s.max_side, s.jpeg_quality, list(s.formats), s.max_frames,
                   s.decode_timeout_s)


@dataclass
class Normalised:
    """What preprocess learned about one original (its normalised derivative and fields; the runner's
    per-image ``Outcome`` is another thing, imported here as ``Outcome``). ``error`` set means the image failed."""

    fields: dict[str, Any] = field(default_factory=dict)  # ImagePrepared-specific fields
    metadata: dict[str, Any] | None = None  # MetadataResult-specific fields, when EXIF could be read
    derivative: bytes | None = None  # new derivative bytes; None with no error = the original serves
    error: StageFailure | None = None
    metadata_ms: float = 0.0
    work_ms: float = 0.0  # fetch + prepare + store, measured in the worker thread
    attempts: int = 1


def _target(w: int, h: int, max_side: int) -> tuple[int, int]:
    long_side = max(w, h)
    if long_side <= max_side:
        return w, h
    scale = max_side / long_side
    return max(1, round(w * scale)), max(1, round(h * scale))


def prepare(data: bytes, limits: Limits, budget: MemoryBudget | None = None) -> Normalised:
    """Validate and normalise one original. Pure: bytes in, derivative bytes and fields out.

    ``budget``: the decode (decode, convert, resize, encode) holds ``decode_cost`` bytes of it, as
    estimated from the header once the pixel limit passed; it waits while other images' decodes
    hold the rest, and fails with ``over_memory_budget``, never decoding, if it can never fit.

    ``limits.decode_timeout_s``: everything from opening the original to encoding the derivative
    runs in a thread of its own (``run_within``), waited for that long at most; past it the outcome
    fails with ``decode_timeout`` and the abandoned decode finishes in the background, holding its
    part of the budget until then (Python cannot stop a decode running in C)."""
    fields = {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def attempt() -> Normalised:
        out = Normalised(fields=dict(fields))  # its own: an abandoned attempt writes to nobody's outcome
        try:
            _prepare(data, limits, out, budget)
        except StageFailure as exc:
            # without tracebacks: their frames would keep a (partly) decoded image alive as long as the outcome
            exc.__context__ = exc.__cause__ = None
            out.error = exc.with_traceback(None)
        return out

    try:
        return run_within(limits.decode_timeout_s, attempt, what=f"{len(data)} byte original",
                          account=budget.account(STAGE) if budget is not None else None)
    except StageFailure as exc:  # decode_timeout
        return Normalised(fields=dict(fields), error=exc.with_traceback(None))


def _prepare(data: bytes, limits: Limits, out: Normalised, budget: MemoryBudget | None = None) -> None:
    if len(data) > limits.max_bytes:
        raise StageFailure("too_large", f"original is {len(data)} bytes, over the {limits.max_bytes} byte limit")
    if not data:
        raise StageFailure("empty", "original is empty")
    fmt = sniff(data)
    if fmt is None:
        raise StageFailure("not_an_image", "not an image: no known magic bytes")
    out.fields.update(format=fmt, mime_type=_MIME[fmt])
    if fmt not in limits.formats:
        raise StageFailure("format_not_allowed", f"{fmt} is not an allowed format ({', '.join(limits.formats)})")
    if fmt in ("HEIF", "AVIF"):
        _register_heif_plugin(fmt)
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own guard: over twice Image.MAX_IMAGE_PIXELS
        raise StageFailure("too_many_pixels", f"{exc}: over the {limits.max_pixels} pixel limit") from None
    except Image.UnidentifiedImageError:
        raise StageFailure("undecodable", f"{fmt} header could not be parsed") from None
    except Exception as exc:
        raise StageFailure("undecodable", f"{fmt} header could not be parsed: {exc}") from None
    if img.format not in _PIL_FORMAT[fmt]:
        raise StageFailure("format_mismatch", f"magic bytes say {fmt}, decoder says {img.format}")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise StageFailure("undecodable", "image has no pixels")
    if w * h > limits.max_pixels:
        raise StageFailure("too_many_pixels", f"{w}x{h} = {w * h} pixels, over the {limits.max_pixels} pixel limit")
    frames = count_frames(img, fmt, data, limits.max_frames)
    if frames > limits.max_frames:
        raise StageFailure(ErrorCode.TOO_MANY_FRAMES, f"{fmt} has over {limits.max_frames} pages or frames "
                                                      f"(the limit, LENSFLOW_MAX_FRAMES); only the first is analysed")

    tw, th = _target(w, h, limits.max_side)
    # admitted against the memory budget from the header, before any pixel is decoded (a PNG's EXIF
    # may follow its pixels: Pillow decodes the whole image to read it), held until encoded
    admitted = nullcontext() if budget is None else budget.reserve(
        decode_cost(img, fmt, (tw, th), reuse=_served_as_is(img, fmt, (tw, th))), what=f"{w}x{h} {img.mode} {fmt}")
    with admitted:
        t0 = time.perf_counter()
        md = metadata_stage.extract(img)
        out.metadata = md
        out.metadata_ms = (time.perf_counter() - t0) * 1000
        orientation = md.get("orientation", 1)
        swapped = orientation in (5, 6, 7, 8)
        out.fields.update(original_width=h if swapped else w, original_height=w if swapped else h, orientation=orientation)

        reuse = fmt == "JPEG" and orientation == 1 and (tw, th) == (w, h) and img.mode in ("RGB", "L")
        try:
            if fmt == "JPEG" and (tw, th) != (w, h):
                img.draft("RGB", (tw, th))  # DCT-domain downscale to the smallest scale >= target
            img.load()
        except Exception as exc:
            raise StageFailure("undecodable", f"{fmt} data could not be decoded: {exc}") from None

        if reuse:
            out.fields.update(width=w, height=h, derivative_sha256=out.fields["sha256"], derivative_size_bytes=len(data))
            del img  # freed before the budget is
            return

        # frame 0 (never seek: walking a TIFF's pages is quadratic in Pillow, and GIF's seek decodes each frame)
        img = _to_rgb(img)
        if img.size != (tw, th):
            img = shrink(img, (tw, th))
        if orientation in _TRANSPOSE:
            img = img.transpose(_TRANSPOSE[orientation])
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=limits.jpeg_quality)
        derivative = buf.getvalue()
        width, height = img.size
        del img, buf  # the derivative's pixels are freed before the budget is
    out.derivative = derivative
    out.fields.update(width=width, height=height, derivative_sha256=hashlib.sha256(derivative).hexdigest(),
                      derivative_size_bytes=len(derivative))


def count_frames(img: Image.Image, fmt: str, data: bytes, limit: int) -> int:
    """Pages or frames of the opened ``img`` (``data`` its bytes), counted no further than ``limit`` + 1,
    without decoding any. Pillow's ``n_frames`` must not be asked of untrusted input: for TIFF and
    GIF it walks every page (TIFF quadratically: 10k pages took 1.4 s, 100k 67 s, and 50 MiB holds
    ~460k), so those two are counted here from the file's structure, in linear time; the other
    formats declare their count in a header Pillow has already read (APNG's acTL, WebP's ANIM,
    MPO's index, HEIF's item list)."""
    if fmt == "TIFF":
        return _tiff_pages(data, limit)
    if fmt == "GIF":
        return _gif_frames(data, limit)
    try:
        return int(getattr(img, "n_frames", 1) or 1)
    except Exception:
        return 1


def _tiff_pages(data: bytes, limit: int) -> int:
    """IFDs in the main chain of a classic TIFF (what Pillow calls its frames), at most ``limit`` + 1;
    each costs one read of its entry count and next-IFD offset, never of its tags. A chain that loops
    ends where it loops (as in Pillow)."""
    order = "<" if data[:2] == b"II" else ">"
    seen: set[int] = set()
    try:
        (offset,) = struct.unpack_from(order + "I", data, 4)
        while offset and offset not in seen and len(seen) <= limit:
            seen.add(offset)
            (count,) = struct.unpack_from(order + "H", data, offset)
            (offset,) = struct.unpack_from(order + "I", data, offset + 2 + 12 * count)
    except struct.error:  # the chain runs past the end: the pages counted so far
        pass
    return max(1, len(seen))


_GIF_BLOCK = re.compile(rb"[,!;]")


def _gif_frames(data: bytes, limit: int) -> int:
    """Image descriptors of a GIF, at most ``limit`` + 1, from its block structure (sub-block sizes are
    read, LZW data never decoded). Bytes between blocks are skipped as Pillow does, searched in C."""
    n, end = 0, len(data)
    pos = 13 + (3 << ((data[10] & 7) + 1) if len(data) > 10 and data[10] & 0x80 else 0)  # after the global colour table
    while pos < end:
        found = _GIF_BLOCK.search(data, pos)
        if found is None or data[found.start()] == 0x3B:  # ";": the trailer
            break
        pos = found.start()
        if data[pos] == 0x2C:  # ",": an image descriptor, its local colour table, the LZW code size
            n += 1
            if n > limit:
                break
            flags = data[pos + 9] if pos + 9 < end else 0
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
        else:  # "!": an extension and its label
            pos += 2
        while pos < end:  # data sub-blocks, up to the empty one
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
    return max(1, n)


def _served_as_is(img: Image.Image, fmt: str, target: tuple[int, int]) -> bool:
    """Whether ``_prepare`` will serve the original as its own derivative, from the header (a JPEG's
    EXIF is read without decoding); False when in doubt, which only makes ``decode_cost`` larger."""
    if fmt != "JPEG" or target != img.size or img.mode not in ("RGB", "L"):
        return False
    try:
        return img.getexif().get(0x0112, 1) == 1
    except Exception:
        return False


def shrink(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``img`` (RGB or L) downscaled to ``size``. Less than 2x (always the case for a JPEG after the
    draft decode, and for photos just over the cap): OpenCV's bilinear interpolation, which has no
    aliasing to fear below 2x and costs 2-3 ms at 2 MP against 14 ms for Pillow's (convolution-
    based) bilinear; 2x and more: Pillow's antialiased bilinear with ``reducing_gap``."""
    if img.mode in ("RGB", "L") and img.width < 2 * size[0] and img.height < 2 * size[1]:
        import cv2
        import numpy as np

        return Image.fromarray(cv2.resize(np.asarray(img), size, interpolation=cv2.INTER_LINEAR))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return img.point(lambda v: v / 256).convert("RGB") if img.mode != "F" else img.convert("L").convert("RGB")
    return img.convert("RGB")


_HEIF_TRIED = False


def _register_heif_plugin(fmt: str) -> None:
    global _HEIF_TRIED
    if not _HEIF_TRIED:
        _HEIF_TRIED = True
        try:
            import pillow_heif  # type: ignore

            pillow_heif.register_heif_opener()
            if hasattr(pillow_heif, "register_avif_opener"):
                pillow_heif.register_avif_opener()
        except Exception:
            pass
    if fmt not in Image.registered_extensions().values() and fmt not in Image.OPEN:
        raise StageFailure("format_unsupported", f"{fmt} needs a Pillow plugin (pip install 'lensflow[heif]')")


# ---------------------------------------------------------------------------------------------
# The agent: moves bytes; the logic above is what it runs.
# ---------------------------------------------------------------------------------------------

class Preprocess(Stage):
    """preprocess on the runner: each image of a batch in the thread pool, one hop per image."""

    name = STAGE
    reads = (UPLOADED,)
    expects = "ImageUploaded"

    def __init__(self, ctx):
        super().__init__(ctx)
        s = self.settings
        self.limits = Limits.from_settings(s)
        self.pool = ThreadPoolExecutor(max_workers=s.preprocess_threads or (os.cpu_count() or 1) + 1,
                                       thread_name_prefix="preprocess")
        # the worker's one decode budget, shared with the model stages' decodes of derivatives; freed blocks of
        # 8 MiB and more (decoded originals, Pillow's image blocks) go back to the OS, so the budget bounds RSS;
        # smaller ones (the models' input tensors) stay in malloc's arenas: pinned at 1 MiB every inference
        # paid page faults (+4 % worker CPU per image on bench/stages.py)
        self.budget = decode_budget(ctx, malloc_mmap_threshold=8 * 2**20)
        self.stage_metrics = ctx.metrics.stage(STAGE)
        self.md_metrics = ctx.metrics.stage("metadata")

    async def start(self) -> None:
        """Load the reverse geocoder's places now, off the loop, not on the first photo with GPS (~0.5 s)."""
        from . import geocode

        if geocode.available():
            await asyncio.get_running_loop().run_in_executor(None, geocode.warm)
        else:
            self.log.warning("geocoder_unavailable", reason="the GeoNames data is not prepared: photos get no place",
                             fix="lensflow models prepare geonames")

    def records(self, upload: dict, outcome: Normalised, source: str, plan, duration: float) -> list[Output]:
        """analysis.metadata and images.prepared for one upload (its decoded ``ImageUploaded``; the join
        needs both, in either order)."""
        image_id, user_id, run_id = upload["image_id"], upload["user_id"], upload["run_id"]
        error = None
        if outcome.error is not None:
            e = outcome.error
            error = StageError(code=str(e.code), message=e.message[:500], retryable=e.retryable, attempts=outcome.attempts)
        status = Status.FAILED if error else Status.OK
        md_fields = metadata_stage.record_fields(outcome.metadata or {})
        md = result(MetadataResult, "metadata", image_id, user_id, run_id, model=metadata_stage.MODEL,
                    status=Status.OK if outcome.metadata is not None else Status.FAILED,
                    error=None if outcome.metadata is not None else (
                        error or StageError(code=str(ErrorCode.UNREADABLE), message="no metadata", retryable=False, attempts=1)),
                    duration_ms=outcome.metadata_ms, **md_fields)
        for w in md_fields.get("warnings", []):
            self.log.warning("metadata_value_dropped", image_id=image_id, detail=w)
        fields = dict(outcome.fields)
        prepared = result(ImagePrepared, STAGE, image_id, user_id, run_id, model=MODEL, status=status, error=error, duration_ms=duration,
                          source_uri=source, uri=fields.pop("uri", None),
                          expected_stages=(plan.expected if plan and not error else ["metadata"]),
                          derived_stages=(plan.derived if plan and not error else []),
                          uploaded_at=upload["uploaded_at"], **fields)
        self.stage_metrics.observe(duration / 1000, status)
        self.md_metrics.observe(outcome.metadata_ms / 1000, md.status)
        return [Output("analysis.metadata", image_id, "MetadataResult", md), Output(PREPARED, image_id, "ImagePrepared", prepared)]

    def failed(self, item: Item, verdict: Verdict) -> list[Output]:
        upload = item.record
        out = Normalised(error=StageFailure(verdict.code, verdict.message, verdict.retryable))
        return self.records(upload, out, upload["uri"], None, 0.0)

    async def one(self, item: Item) -> Outcome:
        """The outcome of one upload; never raises for a fault of that image alone."""
        upload: dict = item.record  # a decoded ImageUploaded
        s = self.settings
        t0, started = time.perf_counter(), now()
        plan, source, dead = None, upload["uri"], None
        try:
            try:
                plan = plan_for(upload.get("stages"), s.stages)
            except ValueError as exc:
                raise StageFailure(ErrorCode.BAD_REQUEST, str(exc)) from None
            check_user_id(upload["user_id"])
            source = self.ctx.storage.check_owned(upload["uri"], upload["user_id"], s.per_user_storage)
            outcome = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.ctx.metrics.cpu_timed, STAGE, _work, self.ctx.storage, source, self.limits,
                s.fetch_retries, self.budget)
        except Exception as exc:
            attempts = getattr(exc, "attempts", 1)
            # storage down is an outage, not this image's fault: record_fault raises it, and the runner retries
            # the whole batch un-acked (a minute's S3 or NFS outage no longer fails every upload read in it)
            verdict = classify(record_fault(exc, attempts, "reading the original"))
            outcome = Normalised(error=StageFailure(verdict.code, verdict.message, verdict.retryable), attempts=attempts)
            dead = verdict if verdict.dead_letter else None
        if outcome.error is not None:
            self.log.warning("image_failed", image_id=upload["image_id"], code=outcome.error.code, reason=outcome.error.message)
        # the stage's own time (fetch + decode + encode + store), not time queued behind other images
        duration = outcome.work_ms if outcome.work_ms else (time.perf_counter() - t0) * 1000
        return Outcome(self.records(upload, outcome, source, plan, duration), dead, outcome.attempts,
                            first_failed_at=started if dead is not None else None)

    async def process(self, items: list[Item]) -> list[Outcome]:
        return list(await asyncio.gather(*(self.one(item) for item in items)))


def register(ctx, stages: list[str] | None = None) -> None:
    run(ctx, Preprocess(ctx))


def _work(storage, source: str, limits: Limits, fetch_attempts: int, budget: MemoryBudget | None = None) -> Normalised:
    """Everything for one image that runs off the event loop, in one thread hop, timed. ``budget``
    (one per worker, shared by the pool's threads) admits the decode: see ``prepare``."""
    t0 = time.perf_counter()
    data, attempts = retry_sync(lambda: storage.read(source, limits.max_bytes), fetch_attempts)
    outcome = prepare(data, limits, budget)
    if outcome.error is None:
        if outcome.derivative is None:
            outcome.fields["uri"] = source
        else:
            outcome.fields["uri"] = storage.write(derivative_url(source, storage), outcome.derivative)
            outcome.derivative = None
    outcome.attempts = attempts
    outcome.work_ms = (time.perf_counter() - t0) * 1000
    return outcome
