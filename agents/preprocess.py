"""preprocess: images.uploaded → images.prepared + analysis.metadata.

fetch the original (fenced to the storage roots) → sniff magic bytes → allow-list the format →
byte and pixel limits (decompression bombs are refused from the header, before any decode) →
EXIF metadata from the original → decode fully (a truncated file fails here) → cap the long side →
apply EXIF orientation → store a JPEG derivative next to the original → publish.

Speed (see bench/spine.py and shared MODELS.md): JPEGs are decoded with Pillow's ``draft`` at the
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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import PIL
from PIL import Image

from lensflow.streams.errors import StageFailure, classify, retrying
from lensflow.streams.records import result
from lensflow.streams.storage import derivative_url
from lensflow.streams.topology import PREPARED, UPLOADED, plan_for

from . import metadata as metadata_stage

STAGE = "preprocess"
MODEL = {"name": "pillow-normalise", "version": f"1+pillow{PIL.__version__}", "sha256": None}

# lensflow enforces its own pixel limit (max_pixels) from the header, before decoding.
Image.MAX_IMAGE_PIXELS = None

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

    @classmethod
    def from_settings(cls, s) -> "Limits":
        return cls(s.max_bytes, s.max_pixels, s.max_side, s.jpeg_quality, list(s.formats))


@dataclass
class Outcome:
    """What preprocess learned about one original. ``error`` set means the image failed."""

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


def prepare(data: bytes, limits: Limits) -> Outcome:
    """Validate and normalise one original. Pure: bytes in, derivative bytes and fields out."""
    out = Outcome()
    out.fields = {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        _prepare(data, limits, out)
    except StageFailure as exc:
        out.error = exc
    return out


def _prepare(data: bytes, limits: Limits, out: Outcome) -> None:
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

    t0 = time.perf_counter()
    md = metadata_stage.extract(img)
    out.metadata = md
    out.metadata_ms = (time.perf_counter() - t0) * 1000
    orientation = md.get("orientation", 1)
    swapped = orientation in (5, 6, 7, 8)
    out.fields.update(original_width=h if swapped else w, original_height=w if swapped else h, orientation=orientation)

    tw, th = _target(w, h, limits.max_side)
    reuse = fmt == "JPEG" and orientation == 1 and (tw, th) == (w, h) and img.mode in ("RGB", "L")
    try:
        if fmt == "JPEG" and (tw, th) != (w, h):
            img.draft("RGB", (tw, th))  # DCT-domain downscale to the smallest scale >= target
        img.load()
    except Exception as exc:
        raise StageFailure("undecodable", f"{fmt} data could not be decoded: {exc}") from None

    if reuse:
        out.fields.update(width=w, height=h, derivative_sha256=out.fields["sha256"], derivative_size_bytes=len(data))
        return

    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = _to_rgb(img)
    if img.size != (tw, th):
        img = shrink(img, (tw, th))
    if orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[orientation])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=limits.jpeg_quality)
    derivative = buf.getvalue()
    out.derivative = derivative
    out.fields.update(width=img.width, height=img.height, derivative_sha256=hashlib.sha256(derivative).hexdigest(),
                      derivative_size_bytes=len(derivative))


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

def register(ctx, stages: list[str] | None = None) -> None:
    settings = ctx.settings
    limits = Limits.from_settings(settings)
    pool = ThreadPoolExecutor(max_workers=settings.preprocess_threads or (os.cpu_count() or 1) + 1,
                              thread_name_prefix="preprocess")
    stage_metrics = ctx.metrics.stage(STAGE)
    md_metrics = ctx.metrics.stage("metadata")

    async def one(event) -> None:
        t0 = time.perf_counter()
        try:
            _, upload = ctx.codec.decode(event.message.value, expect="ImageUploaded")
        except Exception as exc:
            await ctx.dead_letter(STAGE, event, classify(exc))
            return
        image_id, user_id, run_id = upload["image_id"], upload["user_id"], upload["run_id"]
        log = ctx.log.bind(stage=STAGE, image_id=image_id)
        attempts, plan, source = 1, None, upload["uri"]
        try:
            try:
                plan = plan_for(upload.get("stages"), settings.stages)
            except ValueError as exc:
                raise StageFailure("bad_request", str(exc)) from None
            source = ctx.storage.check(upload["uri"])
            outcome = await asyncio.get_running_loop().run_in_executor(
                pool, ctx.metrics.cpu_timed, STAGE, _work, ctx.storage, source, limits, settings.fetch_retries)
            attempts = outcome.attempts
        except Exception as exc:
            verdict = classify(exc)
            attempts = settings.fetch_retries if verdict.retryable else attempts
            outcome = Outcome(error=StageFailure(verdict.code, verdict.message, verdict.retryable))
            if verdict.dead_letter:
                await ctx.dead_letter(STAGE, event, verdict, attempts=attempts, image_id=image_id)
        # the stage's own time (fetch + decode + encode + store), not time queued behind other images
        duration = outcome.work_ms if outcome.work_ms else (time.perf_counter() - t0) * 1000
        error = None
        if outcome.error is not None:
            e = outcome.error
            error = {"code": e.code, "message": e.message[:500], "retryable": e.retryable, "attempts": attempts}
            log.warning("image_failed", code=e.code, reason=e.message)
        status = "failed" if error else "ok"
        # metadata first: the join needs both, in whichever order they arrive
        md_fields = outcome.metadata or {}
        md = result("metadata", image_id, user_id, run_id, model=metadata_stage.MODEL,
                    status="ok" if outcome.metadata is not None else "failed",
                    error=None if outcome.metadata is not None else (error or {"code": "unreadable", "message": "no metadata", "retryable": False, "attempts": 1}),
                    duration_ms=outcome.metadata_ms, **md_fields)
        for w in md_fields.get("warnings", []):
            log.warning("metadata_value_dropped", detail=w)
        prepared = result(STAGE, image_id, user_id, run_id, model=MODEL, status=status, error=error, duration_ms=duration,
                          source_uri=source, uri=outcome.fields.pop("uri", None),
                          expected_stages=(plan.expected if plan and not error else ["metadata"]),
                          derived_stages=(plan.derived if plan and not error else []),
                          uploaded_at=upload["uploaded_at"], **outcome.fields)
        await ctx.send("analysis.metadata", image_id, "MetadataResult", md)
        await ctx.send(PREPARED, image_id, "ImagePrepared", prepared)
        stage_metrics.observe(duration / 1000, status)
        md_metrics.observe(outcome.metadata_ms / 1000, md["status"])

    @ctx.app.agent(ctx.topic(UPLOADED), name=STAGE)
    async def preprocess(stream):
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within_s):
            # one record's failure never touches the others; nothing escapes (see FAUST-NOTES: a raise acks the batch)
            with ctx.metrics.batch(STAGE, len(events)):
                results = await asyncio.gather(*(one(e) for e in events), return_exceptions=True)
            for event, res in zip(events, results):
                if isinstance(res, BaseException):
                    await ctx.dead_letter(STAGE, event, classify(res))


def _work(storage, source: str, limits: Limits, fetch_attempts: int) -> Outcome:
    """Everything for one image that runs off the event loop, in one thread hop, timed."""
    t0 = time.perf_counter()
    attempts = 0
    for attempt in retrying(fetch_attempts):
        with attempt:
            attempts = attempt.retry_state.attempt_number
            data = storage.read(source, limits.max_bytes)
    outcome = prepare(data, limits)
    if outcome.error is None:
        if outcome.derivative is None:
            outcome.fields["uri"] = source
        else:
            outcome.fields["uri"] = storage.write(derivative_url(source), outcome.derivative)
            outcome.derivative = None
    outcome.attempts = attempts
    outcome.work_ms = (time.perf_counter() - t0) * 1000
    return outcome
