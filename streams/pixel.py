"""The agent shared by every *pixel* stage (objects, scene, text, faces, embedding): it reads
``images.prepared``, and per batch loads the derivatives, makes ONE ``model.predict`` call off the
event loop, and publishes one result record per image on the stage's topic.

A stage module supplies only its domain logic:

    pixel_stage(ctx, "scene", model=lambda: EfficientNetLite0(...), fields=lambda pred, prepared: {...})

* Images whose ``expected_stages`` do not name the stage, or whose preprocess failed, are skipped
  (the join does not wait for them).
* The model is loaded and warmed up once per worker before the agent consumes. Missing weights or
  a checksum mismatch do not stop the worker: every image gets ``status=failed`` with code
  ``model_unavailable`` and the reason, so the join completes it as ``partial``.
* One image that fails (unreadable derivative, a bug in post-processing) fails alone; a failing
  batch inference fails the batch's images; nothing escapes the loop body (Faust would ack it).
* Box coordinates: models see the derivative (EXIF-transposed, long side capped); ``fields`` gets
  ``scale`` to map derivative pixels to original-image pixels.
* The agents of one worker share one decode of each derivative and are kept within two batches of
  each other by ``DecodedCache``. Each agent's CPU time (``lensflow_stage_cpu_seconds_total``) is
  measured in its own threads; its reported stage time leaves out waiting for slower agents.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from PIL import Image

from .errors import StageFailure, classify
from .records import result
from .topology import PREPARED, STAGES, TOPICS


def scale_box(box, scale: tuple[float, float]) -> dict:
    """(x1, y1, x2, y2) in derivative pixels -> Box in original-image pixels."""
    sx, sy = scale
    x1, y1, x2, y2 = (box["x1"], box["y1"], box["x2"], box["y2"]) if isinstance(box, dict) else box
    return {"x1": float(x1) * sx, "y1": float(y1) * sy, "x2": float(x2) * sx, "y2": float(y2) * sy}


def decode_derivative(storage, uri: str, max_bytes: int) -> Image.Image:
    """The derivative at ``uri``, decoded, in RGB."""
    data = storage.read(uri, max_bytes)
    img = Image.open(io.BytesIO(data))
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

    Callers must not modify the images they get."""

    def __init__(self, size: int, metric=None, wait_s: float = 5.0):
        from collections import OrderedDict

        self.size = size
        self.wait_s = wait_s
        self._items: "OrderedDict[str, tuple[Any, set[str]]]" = OrderedDict()
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
            self._cond.notify_all()

    def readers_of(self, expected_stages) -> set[str]:
        expected = set(expected_stages or ())
        return {agent for agent, stages in self.readers.items() if stages & expected}

    def __len__(self) -> int:
        return len(self._items)

    def _count(self, result: str) -> None:
        if self._metric is not None:
            self._metric.labels(result).inc()

    def get(self, storage, uri: str, max_bytes: int, reader: str = "", readers: set[str] | frozenset = frozenset()) -> Image.Image:
        """The decoded image at ``uri`` for agent ``reader``; ``readers``: every agent here that will ask."""
        import concurrent.futures

        self._local.wait_s = 0.0
        with self._cond:
            pending = set(readers) - {reader}
            if uri not in self._items and pending and len(self._items) >= self.size:
                t0 = time.perf_counter()
                if not self._cond.wait_for(lambda: uri in self._items or len(self._items) < self.size, self.wait_s):
                    self._items.popitem(last=False)
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
                if pending:
                    self._items[uri] = (fut, pending)
                owner = True
        self._count("miss" if owner else "hit")
        if owner:
            try:
                fut.set_result(decode_derivative(storage, uri, max_bytes))
            except BaseException as exc:
                fut.set_exception(exc)
                with self._cond:
                    if self._items.get(uri, (None,))[0] is fut:
                        del self._items[uri]
                        self._cond.notify_all()
        return fut.result()


def decoded_cache(ctx) -> DecodedCache:
    """One cache per worker process (the context): the agents within two batches of each other (one
    batch: no faster on the bench, four: a longer drain after a burst, for the slowest agent alone)."""
    if getattr(ctx, "decoded_cache", None) is None:
        cache = ctx.decoded_cache = DecodedCache(size=2 * ctx.settings.model_batch_size, metric=ctx.metrics.decoded)

        async def forget(app, revoked, **kwargs) -> None:
            cache.clear()

        ctx.app.on_partitions_revoked.connect(forget)  # held strongly (weak=False is the default)
    return ctx.decoded_cache


def pixel_stage(ctx, name: str, model: Callable[[], Any], outputs: dict[str, Callable[[Any, dict], Any]],
                warmup: Callable[[], Image.Image] | None = None) -> None:
    """Register the agent ``name`` running ``model`` once per batch and publishing one record per
    stage in ``outputs`` (stage -> fields function, sync or async): stages sharing a network share
    its forward pass (scene and embedding) but publish separate results."""
    settings, app = ctx.settings, ctx.app
    io_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{name}-io")
    infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-infer")
    log = ctx.log.bind(stage=name)
    state: dict[str, Any] = {"model": None, "error": None}
    loaded = asyncio.Event()

    def load() -> None:
        m = model()
        m.load()
        m.warmup(warmup() if warmup else Image.new("RGB", (320, 240), (127, 127, 127)))
        state["model"] = m

    @app.task
    async def load_model() -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(infer_pool, load)
        except Exception as exc:
            state["error"] = StageFailure("model_unavailable", f"{name} model unavailable: {exc}")
            decoded_cache(ctx).unregister(name)  # it will read no derivative: nothing waits for it
            log.error("model_unavailable", error=str(exc))
        loaded.set()

    ctx.ready_checks.append((f"{name}_model", loaded.is_set))
    cache = decoded_cache(ctx)
    cache.register(name, outputs)

    stage_metrics = {stage: ctx.metrics.stage(stage) for stage in outputs}

    waited = ctx.metrics.decoded_wait.labels(name)

    def load_derivative(prepared: dict) -> tuple[Image.Image, float]:
        """The decoded derivative and the seconds spent getting it, less any wait for slower agents."""
        t0 = time.perf_counter()
        img = cache.get(ctx.storage, prepared["uri"], settings.max_bytes, name, cache.readers_of(prepared.get("expected_stages")))
        wait = cache.last_wait_s()
        waited.inc(wait)
        return img, time.perf_counter() - t0 - wait

    def wanted(prepared: dict) -> list[str]:
        return [s for s in outputs if s in (prepared.get("expected_stages") or [])]

    async def publish(stage: str, prepared: dict, status: str, error: dict | None, duration_ms: float, extra: dict) -> None:
        m = state["model"]
        topic = STAGES[stage].writes[0]
        rec = result(stage, prepared["image_id"], prepared["user_id"], prepared["run_id"],
                     model=m.ref if m is not None else None, status=status, error=error, duration_ms=duration_ms, **extra)
        await ctx.send(topic, prepared["image_id"], TOPICS[topic].record, rec)
        stage_metrics[stage].observe(duration_ms / 1000, status)

    async def fail(prepared: dict, exc: BaseException, duration_ms: float = 0.0, stages: list[str] | None = None) -> None:
        verdict = classify(exc)
        log.warning("image_failed", image_id=prepared["image_id"], code=verdict.code, reason=verdict.message)
        for stage in stages or wanted(prepared):
            await publish(stage, prepared, "failed", verdict.as_error(), duration_ms, {})

    async def handle(events) -> None:
        loop = asyncio.get_running_loop()
        todo: list[dict] = []
        for event in events:
            try:
                _, prepared = ctx.codec.decode(event.message.value, expect="ImagePrepared")
            except Exception as exc:
                await ctx.dead_letter(name, event, classify(exc))
                continue
            if prepared["status"] != "ok" or not wanted(prepared):
                continue
            todo.append(prepared)
        if not todo:
            return
        if state["error"] is not None:
            for prepared in todo:
                await fail(prepared, state["error"])
            return
        loads = await asyncio.gather(*(loop.run_in_executor(io_pool, ctx.metrics.cpu_timed, name, load_derivative, p) for p in todo), return_exceptions=True)
        ready = []
        for prepared, got in zip(todo, loads):
            if isinstance(got, BaseException):
                await fail(prepared, got)
            else:
                ready.append((prepared, got[0]))
        if not ready:
            return
        # the stage's own load time: reading and decoding, not waiting for slower agents
        load_ms = sum(x[1] for x in loads if not isinstance(x, BaseException)) * 1000 / len(todo)
        t1 = time.perf_counter()
        try:
            predictions = await loop.run_in_executor(infer_pool, ctx.metrics.cpu_timed, name, state["model"].predict,
                                                     [img for _, img in ready])
        except Exception as exc:
            for prepared, _ in ready:
                await fail(prepared, exc)
            return
        per_image_ms = load_ms + (time.perf_counter() - t1) * 1000 / len(ready)
        ctx.metrics.batch_size.labels(name).observe(len(ready))
        for (prepared, img), pred in zip(ready, predictions):
            info = {**prepared, "scale": (prepared["original_width"] / img.width, prepared["original_height"] / img.height)}
            for stage in wanted(prepared):
                try:
                    extra = outputs[stage](pred, info)
                    if asyncio.iscoroutine(extra):
                        extra = await extra
                except Exception as exc:
                    await fail(prepared, exc, per_image_ms, [stage])
                    continue
                await publish(stage, prepared, "ok", None, per_image_ms, extra)

    @app.agent(ctx.topic(PREPARED), name=name)
    async def agent(stream):
        await loaded.wait()
        if ctx.stores.wanted:
            await ctx.stores.ready.wait()
        async for events in stream.take_events(settings.model_batch_size, within=settings.batch_within_s):
            with ctx.metrics.batch(name, len(events)):
                try:
                    await handle(events)
                except Exception as exc:  # never let a batch body raise: Faust would ack it unprocessed
                    log.error("batch_failed", error=repr(exc))
                    for event in events:
                        await ctx.dead_letter(name, event, classify(exc))
