"""The agent shared by every *pixel* stage (objects, scene, text, faces, embedding): it reads
``images.prepared``, and per batch loads the derivatives, makes ONE ``model.predict`` call off the
event loop, and publishes one result record per image on the stage's topic.

A stage module supplies only its domain logic:

    pixel_stage(ctx, "scene", model=lambda: EfficientNetLite0(...), fields=lambda pred, prepared: {...})

* ``fields`` returns the stage's own fields of its result record (``{"detections": [Detection(...)]}``);
  the runner builds the record, the generated type of the stage's topic (``ObjectsResult(...)``), with
  the envelope every result carries: a field the record does not have fails the image there.

* Images whose ``expected_stages`` do not name the stage, or whose preprocess failed, are skipped
  (the join does not wait for them).
* The model is loaded and warmed up once per worker before the agent consumes. Missing weights or
  a checksum mismatch do not stop the worker: every image gets ``status=failed`` with code
  ``model_unavailable`` and the reason, so the join completes it as ``partial``.
* One image that fails (unreadable derivative, a bug in post-processing) fails alone; a failing
  batch inference fails the batch's images; nothing escapes the loop body (Faust would ack it).
* Only what preprocess produced is decoded (``decode_derivative``): the bytes at the record's ``uri``
  (which may be the user's own original, served as its own derivative) must have the recorded
  SHA-256, be a JPEG of the recorded size within ``max_pixels``, and decode under the worker's
  decode budget and ``decode_timeout_s``; anything else fails the image with a code, undecoded.
* Box coordinates: models see the derivative (EXIF-transposed, long side capped); ``fields`` gets
  ``scale`` to map derivative pixels to original-image pixels.
* The agents of one worker share one decode of each derivative and are kept within two batches of
  each other by ``DecodedCache``. Each agent's CPU time (``lensflow_stage_cpu_seconds_total``) is
  measured in its own threads; its reported stage time leaves out waiting for slower agents.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from .avro_types import Box, StageError, record_type
from .budget import MemoryBudget, decode_budget, run_within
from .decode_cost import decode_cost
from .errors import ErrorCode, StageFailure, Verdict, classify, is_transient, record_fault, retry_sync
from .records import Status, result
from .runner import Item, Outcome, Output, Stage, run
from .topology import PREPARED, STAGES, TOPICS


def scale_box(box, scale: tuple[float, float]) -> Box:
    """(x1, y1, x2, y2) (or a box mapping) in derivative pixels -> Box in original-image pixels."""
    sx, sy = scale
    x1, y1, x2, y2 = (box["x1"], box["y1"], box["x2"], box["y2"]) if isinstance(box, (dict, Box)) else box
    return Box(x1=float(x1) * sx, y1=float(y1) * sy, x2=float(x2) * sx, y2=float(y2) * sy)


def split(items: list, n: int) -> list[list]:
    """``items`` in at most ``n`` contiguous, non-empty parts of near-equal length, in order."""
    n = max(1, min(n, len(items)))
    bounds = [len(items) * i // n for i in range(n + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class Derivative:
    """What preprocess recorded about an image's derivative (``ImagePrepared``): the only bytes a model
    stage decodes."""

    uri: str
    sha256: str | None
    width: int | None = None
    height: int | None = None

    @classmethod
    def of(cls, prepared: dict) -> "Derivative":
        return cls(prepared["uri"], prepared.get("derivative_sha256"), prepared.get("width"), prepared.get("height"))

    @property
    def key(self) -> tuple[str, str | None]:
        return self.uri, self.sha256


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode of a derivative may take: bytes read, pixels, wall-clock seconds (None: no
    limit) and the worker's decode budget (None: none)."""

    max_bytes: int = 50 * 2**20
    max_pixels: int = 100_000_000
    timeout_s: float | None = 30.0
    budget: MemoryBudget | None = None

    @classmethod
    def of(cls, ctx) -> "DecodeLimits":
        s = ctx.settings
        return cls(s.max_bytes, s.max_pixels, s.decode_timeout_s, decode_budget(ctx))


_JPEG = b"\xff\xd8\xff"


def decode_derivative(storage, derivative: "Derivative | dict", limits: DecodeLimits, stage: str = "") -> Image.Image:
    """The derivative preprocess recorded, decoded, in RGB; nothing else is ever decoded.

    ``derivative``: a ``Derivative`` or the ``ImagePrepared`` record it comes from.

    What lies at the URI now is untrusted: an upright JPEG within the size cap is its own derivative,
    in the user's own ``uploads/<user>/`` folder, and may have been replaced since preprocess (a
    30000x30000 PNG of a few hundred kB took a worker to 5.6 GiB). So, before any pixel is decoded:

    * the bytes' SHA-256 must be the recorded ``derivative_sha256`` (a record without one is refused
      too), else ``derivative_changed``;
    * they must be a JPEG (what preprocess writes or reuses) of the recorded width and height
      (``derivative_changed``), within ``max_pixels`` (``too_many_pixels``; Pillow's own guard,
      ``Image.MAX_IMAGE_PIXELS``, stays on behind it);
    * the decode reserves its cost (``decode_cost``, from the header) from the worker's decode budget,
      shared with preprocess (``over_memory_budget`` if it can never fit);
    * hashing, opening and decoding run in a thread of their own (``run_within``), waited for
      ``timeout_s`` at most (``decode_timeout``; the abandoned decode finishes in the background,
      holding its reservation until then), its CPU counted as ``stage``'s.
    """
    if isinstance(derivative, dict):
        derivative = Derivative.of(derivative)
    data = storage.read(derivative.uri, limits.max_bytes)
    account = limits.budget.account(stage) if limits.budget is not None and stage else None
    return run_within(limits.timeout_s, _decode_checked, data, derivative, limits,
                      what=f"derivative {derivative.uri}", account=account)


def _decode_checked(data: bytes, derivative: Derivative, limits: DecodeLimits) -> Image.Image:
    """``decode_derivative``'s checks and decode, in its decode thread."""
    uri = derivative.uri
    if not derivative.sha256:
        raise StageFailure(ErrorCode.DERIVATIVE_CHANGED,
                           f"preprocess recorded no derivative_sha256 for {uri}: it cannot be verified")
    digest = hashlib.sha256(data).hexdigest()
    if digest != derivative.sha256:
        raise StageFailure(ErrorCode.DERIVATIVE_CHANGED,
                           f"{uri} changed after preprocess (SHA-256 {digest[:16]}..., recorded "
                           f"{derivative.sha256[:16]}...): not decoded; submit the image again")
    if not data.startswith(_JPEG):
        raise StageFailure(ErrorCode.DERIVATIVE_CHANGED, f"{uri} is not a JPEG (a derivative always is): not decoded")
    try:
        img = Image.open(io.BytesIO(data), formats=("JPEG",))
    except Image.DecompressionBombError as exc:
        raise StageFailure(ErrorCode.TOO_MANY_PIXELS, f"derivative {uri}: {exc}") from None
    except Exception as exc:
        raise StageFailure(ErrorCode.UNDECODABLE, f"derivative {uri}: JPEG header could not be parsed: {exc}") from None
    w, h = img.size
    if w * h > limits.max_pixels:
        raise StageFailure(ErrorCode.TOO_MANY_PIXELS,
                           f"derivative {uri} is {w}x{h} = {w * h} pixels, over the {limits.max_pixels} pixel limit")
    if derivative.width and derivative.height and (w, h) != (derivative.width, derivative.height):
        raise StageFailure(ErrorCode.DERIVATIVE_CHANGED, f"derivative {uri} is {w}x{h}, preprocess recorded "
                                                         f"{derivative.width}x{derivative.height}: not decoded")
    admitted = nullcontext()
    if limits.budget is not None:
        cost = decode_cost(img, "JPEG", (w, h), reuse=True) + (0 if img.mode == "RGB" else 4 * w * h)  # + convert()
        admitted = limits.budget.reserve(cost, what=f"derivative {w}x{h} {img.mode}")
    with admitted:
        img.load()
        # convert() copies even when the mode is already RGB (~3 ms for 1600 px): only convert what is not
        return img if img.mode == "RGB" else img.convert("RGB")


class DecodedCache:
    """The decoded derivatives shared by the pixel agents of one worker, so that each image is decoded
    once however many stages read it (a 1600 px JPEG costs ~10-15 ms to decode; with one decode per
    stage, decoding was ~13 % of a worker's CPU with every stage on).

    Each entry knows which of this worker's agents still have to read it (``readers``: the agents
    registered here whose stages the image expects) and is dropped when the last one has.

    The cache also keeps the agents in step: an agent that would add an entry while ``size`` entries
    wait for slower agents blocks (in its I/O thread) until one is released, so the fast agents
    (scene) never run more than ``size`` images ahead of the slow ones (text) and memory stays
    bounded (each entry a few MB). After ``wait_s`` it evicts the oldest entry instead and goes on,
    so an agent that stopped reading can slow the others but never stop them; an agent whose model
    failed to load is ``unregister``-ed. Only the agents wait: Faust keeps delivering every topic
    (the join's inputs included), which bounding the agents' topic buffers did not do: a full
    buffer blocks Faust's delivery of every topic, and the join then saw its inputs only when the
    models had finished a whole burst.

    Entries are keyed by URI and recorded hash, and decoded by ``decode_derivative`` under
    ``limits``, once, by the first agent that asks. A decode that fails for good (``derivative_changed``,
    ``decode_timeout``...) stays, failed, for the agents still to read it: they fail that image at
    once instead of each trying again (each waiting out ``decode_timeout_s``); a transient failure
    (storage) is dropped, so that the retry reads again.

    Callers must not modify the images they get."""

    def __init__(self, size: int, metric=None, wait_s: float = 5.0, limits: DecodeLimits | None = None):
        self.size = size
        self.wait_s = wait_s
        self.limits = limits or DecodeLimits()
        self._items: "OrderedDict[tuple, tuple[Any, set[str]]]" = OrderedDict()
        #: evicted entries -> the readers that had not read them yet: an entry decoded again after an
        #: eviction must not wait for readers that already had it (they never ask again, and such
        #: phantom entries would fill the cache and make every agent wait out ``wait_s``)
        self._owed: "OrderedDict[tuple, frozenset[str]]" = OrderedDict()
        self._cond = threading.Condition()
        self._metric = metric  # Counter with a ``result`` label (hit / miss / evicted), or None
        self.readers: dict[str, frozenset[str]] = {}  # agent -> the stages it publishes
        self._local = threading.local()

    def last_wait_s(self) -> float:
        """Seconds the calling thread's last ``get`` waited for slower agents."""
        return getattr(self._local, "wait_s", 0.0)

    def register(self, agent: str, stages) -> None:
        self.readers[agent] = frozenset(stages)

    def unregister(self, agent: str) -> None:
        """``agent`` will read nothing more (its model is unavailable): nothing waits for it."""
        with self._cond:
            self.readers.pop(agent, None)
            for uri, (_, pending) in list(self._items.items()):
                pending.discard(agent)
                if not pending:
                    del self._items[uri]
            self._cond.notify_all()

    def clear(self) -> None:
        """Forget every entry: after a rebalance the agents' buffered records are dropped (and
        redelivered to the partitions' new owners), so entries owed to them would never be read."""
        with self._cond:
            self._items.clear()
            self._owed.clear()
            self._cond.notify_all()

    def readers_of(self, expected_stages) -> set[str]:
        expected = set(expected_stages or ())
        return {agent for agent, stages in self.readers.items() if stages & expected}

    def __len__(self) -> int:
        return len(self._items)

    def _count(self, result: str) -> None:
        if self._metric is not None:
            self._metric.labels(result).inc()

    def get(self, storage, derivative: Derivative, reader: str = "", readers: set[str] | frozenset = frozenset()) -> Image.Image:
        """The decoded ``derivative`` for agent ``reader``; ``readers``: every agent here that will ask."""

        uri = derivative.key  # the entry's key: a file replaced under the same URI is another entry
        self._local.wait_s = 0.0
        with self._cond:
            pending = set(readers) - {reader}
            if uri not in self._items and pending and len(self._items) >= self.size:
                t0 = time.perf_counter()
                if not self._cond.wait_for(lambda: uri in self._items or len(self._items) < self.size, self.wait_s):
                    gone, (_, still) = self._items.popitem(last=False)
                    self._owed[gone] = frozenset(still)  # who will still ask for it: not those who had it
                    while len(self._owed) > 8 * self.size:
                        self._owed.popitem(last=False)
                    self._count("evicted")
                self._local.wait_s = time.perf_counter() - t0
            entry = self._items.get(uri)
            if entry is not None:
                fut, waiting = entry
                waiting.discard(reader)
                if waiting:
                    self._items.move_to_end(uri)
                else:
                    del self._items[uri]
                    self._cond.notify_all()
                owner = False
            else:
                fut = concurrent.futures.Future()
                if uri in self._owed:  # decoded again after an eviction: only the readers that never had it wait for it
                    pending &= self._owed.pop(uri)
                if pending:
                    self._items[uri] = (fut, pending)
                owner = True
        self._count("miss" if owner else "hit")
        if owner:
            try:
                fut.set_result(decode_derivative(storage, derivative, self.limits, reader))
            except BaseException as exc:
                if is_transient(exc):  # dropped: the retry reads again
                    fut.set_exception(exc)
                    with self._cond:
                        if self._items.get(uri, (None,))[0] is fut:
                            del self._items[uri]
                            self._cond.notify_all()
                else:  # kept for the readers to come, without its traceback's frames (they hold the bytes read)
                    exc.__context__ = exc.__cause__ = None
                    fut.set_exception(exc.with_traceback(None))
        return fut.result()


def decoded_cache(ctx) -> DecodedCache:
    """One cache per worker process (the context): the agents within two batches of each other (one
    batch: no faster on the bench, four: a longer drain after a burst, for the slowest agent alone)."""
    if getattr(ctx, "decoded_cache", None) is None:
        cache = ctx.decoded_cache = DecodedCache(size=2 * ctx.settings.model_batch_size, metric=ctx.metrics.decoded,
                                                 limits=DecodeLimits.of(ctx))

        async def forget(app, revoked, **kwargs) -> None:
            cache.clear()

        ctx.app.on_partitions_revoked.connect(forget)  # held strongly (weak=False is the default)
    return ctx.decoded_cache


class PixelStage(Stage):
    """One pixel agent on the runner: per batch, load the derivatives (shared decode), ONE
    ``model.predict`` call off the event loop, one result record per image and stage in ``outputs``
    (stage -> fields function, sync or async): stages sharing a network share its forward pass
    (scene and embedding) but publish separate results."""

    reads = (PREPARED,)
    expects = "ImagePrepared"

    def __init__(self, ctx, name: str, model: Callable[[], Any], outputs: dict[str, Callable[[Any, dict], Any]],
                 warmup: Callable[[], Image.Image] | None = None, instances: int = 1):
        self.name = name
        super().__init__(ctx)
        self.make_model, self.outputs, self.warmup = model, outputs, warmup
        self.instances = max(1, instances)
        self.io_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{name}-io")
        self.infer_pool = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix=f"{name}-infer")
        self.model: Any = None
        self.models: list[Any] = []  # ``instances`` loaded models (the first is ``model``): one predict at a time each
        self.error: StageFailure | None = None
        self.cache = decoded_cache(ctx)
        self.cache.register(name, outputs)
        self.stage_metrics = {stage: ctx.metrics.stage(stage) for stage in outputs}
        self.waited = ctx.metrics.decoded_wait.labels(name)

    @property
    def batch_size(self) -> int:
        return self.settings.model_batch_size

    def load(self) -> None:
        models = []
        for _ in range(self.instances):
            m = self.make_model()
            m.load()
            m.warmup(self.warmup() if self.warmup else Image.new("RGB", (320, 240), (127, 127, 127)))
            models.append(m)
        self.model, self.models = models[0], models

    async def start(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self.infer_pool, self.load)
        except Exception as exc:  # every image then fails with model_unavailable; the worker goes on
            self.error = StageFailure(ErrorCode.MODEL_UNAVAILABLE, f"{self.name} model unavailable: {exc}")
            self.cache.unregister(self.name)  # it will read no derivative: nothing waits for it
            self.log.error("model_unavailable", error=str(exc))

    def load_derivative(self, prepared: dict) -> tuple[Image.Image, float, int]:
        """The decoded derivative, the seconds spent getting it (less any wait for slower agents), and
        the attempts it took (transient read errors are retried ``fetch_retries`` times)."""
        s = self.settings
        readers = self.cache.readers_of(prepared.get("expected_stages"))
        t0 = time.perf_counter()
        derivative = Derivative.of(prepared)
        img, attempts = retry_sync(lambda: self.cache.get(self.ctx.storage, derivative, self.name, readers),
                                   s.fetch_retries, s.retry_base_s, s.retry_max_s)
        wait = self.cache.last_wait_s()
        self.waited.inc(wait)
        return img, time.perf_counter() - t0 - wait, attempts

    def wanted(self, prepared: dict) -> list[str]:
        return [s for s in self.outputs if s in (prepared.get("expected_stages") or [])]

    def result(self, stage: str, prepared: dict, duration_ms: float, error: StageError | None = None, **extra) -> Output:
        topic = STAGES[stage].writes[0]
        status = Status.FAILED if error else Status.OK
        rec = result(record_type(TOPICS[topic].record), stage, prepared["image_id"], prepared["user_id"], prepared["run_id"],
                     model=self.model.ref if self.model is not None else None, status=status, error=error,
                     duration_ms=duration_ms, **extra)
        self.stage_metrics[stage].observe(duration_ms / 1000, status)
        return Output(topic, prepared["image_id"], TOPICS[topic].record, rec)

    def failed(self, item: Item, verdict: Verdict, attempts: int = 1, duration_ms: float = 0.0,
               stages: list[str] | None = None) -> list[Output]:
        return [self.result(stage, item.record, duration_ms, verdict.as_error(attempts))
                for stage in stages or self.wanted(item.record)]

    def failure(self, item: Item, exc: BaseException, attempts: int = 1, duration_ms: float = 0.0,
                stages: list[str] | None = None) -> Outcome:
        verdict = classify(exc)
        self.log.warning("image_failed", image_id=item.image_id, code=verdict.code, reason=verdict.message)
        return Outcome(self.failed(item, verdict, attempts, duration_ms, stages),
                       verdict if verdict.dead_letter else None, attempts)

    async def process(self, items: list[Item]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        outcomes = [Outcome() for _ in items]
        todo = [(i, item) for i, item in enumerate(items)
                if item.record["status"] == Status.OK and self.wanted(item.record)]
        if not todo:
            return outcomes
        if self.error is not None:
            for i, item in todo:
                outcomes[i] = self.failure(item, self.error)
            return outcomes
        loads = await asyncio.gather(*(loop.run_in_executor(self.io_pool, self.ctx.metrics.cpu_timed, self.name,
                                                            self.load_derivative, item.record) for _, item in todo),
                                     return_exceptions=True)
        ready = []
        for (i, item), got in zip(todo, loads):
            if isinstance(got, BaseException):
                attempts = getattr(got, "attempts", 1)
                # storage down raises here (record_fault): the runner retries the batch un-acked, an outage
                outcomes[i] = self.failure(item, record_fault(got, attempts, "reading the derivative"), attempts)
            else:
                ready.append((i, item, got[0]))
        if not ready:
            return outcomes
        # the stage's own load time: reading and decoding, not waiting for slower agents
        load_ms = sum(x[1] for x in loads if not isinstance(x, BaseException)) * 1000 / len(todo)
        t1 = time.perf_counter()
        images = [img for _, _, img in ready]
        try:
            # each model instance's part of the batch in its own inference thread (one part with one instance)
            parts = [loop.run_in_executor(self.infer_pool, self.ctx.metrics.cpu_timed, self.name, m.predict, part)
                     for m, part in zip(self.models, split(images, len(self.models)))]
            predictions = [p for part in await asyncio.gather(*parts) for p in part]
        except Exception as exc:
            for i, item, _ in ready:
                outcomes[i] = self.failure(item, exc)
            return outcomes
        per_image_ms = load_ms + (time.perf_counter() - t1) * 1000 / len(ready)
        self.ctx.metrics.batch_size.labels(self.name).observe(len(ready))
        for (i, item, img), pred in zip(ready, predictions):
            prepared = item.record
            info = {**prepared, "scale": (prepared["original_width"] / img.width, prepared["original_height"] / img.height)}
            outputs, failure = [], None
            for stage in self.wanted(prepared):
                try:
                    extra = self.outputs[stage](pred, info)
                    if asyncio.iscoroutine(extra):
                        extra = await extra
                    out = self.result(stage, prepared, per_image_ms, **extra)  # a field the record lacks: TypeError
                except Exception as exc:
                    if is_transient(exc):
                        raise  # a store behind the fields function (the faces gallery) is down: retry the batch
                    failure = self.failure(item, exc, duration_ms=per_image_ms, stages=[stage])
                    outputs += failure.outputs
                    continue
                outputs.append(out)
            outcomes[i] = Outcome(outputs, failure.dead_letter if failure else None)
        return outcomes


def pixel_stage(ctx, name: str, model: Callable[[], Any], outputs: dict[str, Callable[[Any, dict], Any]],
                warmup: Callable[[], Image.Image] | None = None, instances: int = 1) -> PixelStage:
    """Register the pixel agent ``name`` (see ``PixelStage``) on the runner; ``instances`` model instances
    share each batch (each in its own inference thread)."""
    stage = PixelStage(ctx, name, model, outputs, warmup, instances)
    run(ctx, stage)
    return stage
