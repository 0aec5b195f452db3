"""The one Faust app of a lensflow worker, and the context every agent is built with.

``build(settings, stages)`` makes a ``faust.App`` configured from settings (the consumer group,
guarantees, batching and buffer sizes, state store, web endpoint), then asks each selected stage's
module to ``register(ctx)`` its agent. Agents get everything through ``Context``: the codec, the
storage, the metrics, the topics by name, ``send`` (Avro-encode + produce, keyed by image id) and
``dead_letter``. Nothing is registered at import time, so ``--stages`` really selects what runs.

Choices, with the facts behind them in shared FAUST-NOTES.md:
* values are ``raw`` bytes decoded by lensflow's codec inside try/except: a Faust codec that fails
  crashes the agent;
* ``stream_buffer_maxsize`` and ``broker_max_poll_records`` are a few batches, not 4096 records;
* agent ``concurrency=1`` (Faust can commit past in-flight messages otherwise); stages parallelise
  inside a batch instead;
* ``web_tables_enabled`` is off (it would serve table contents over HTTP);
* tables use ``rocksdb://`` so a restart does not replay whole changelogs, and their changelog
  partition is chosen by key (``use_partitioner``) because take() batches span partitions.
"""

from __future__ import annotations

import importlib
import weakref
from typing import Any

import faust
import structlog

from .codec import Codec
from .errors import Verdict
from .observability import Metrics
from .records import now
from .settings import Settings
from .storage import Storage
from .topology import DEADLETTER, RUNNABLE, STAGES, TOPICS

log = structlog.get_logger("lensflow")


class Stores:
    """The store clients of one worker process, opened once at start-up, before any agent consumes.

    Stages ask for what they need (``want``) while registering; Qdrant local mode admits one opener
    per folder, so every stage of a process shares these clients (the join's sinks, the faces
    gallery). A store that cannot be opened stops the worker with a clear message.
    """

    def __init__(self, settings: Settings):
        import asyncio

        self.settings = settings
        self.wanted: set[str] = set()
        self.cassandra = None
        self.qdrant = None
        self.ready = asyncio.Event()

    def want(self, *names: str) -> None:
        self.wanted.update(names)

    def open(self) -> None:
        from .sinks import CassandraSink, QdrantSink

        s = self.settings
        if "cassandra" in self.wanted:
            self.cassandra = CassandraSink(s.cassandra_hosts, s.cassandra_port, s.cassandra_keyspace)
        if "qdrant" in self.wanted:
            self.qdrant = QdrantSink(s.qdrant_url, s.qdrant_path, s.qdrant_api_key)

    def close(self) -> None:
        for store in (self.cassandra, self.qdrant):
            if store is not None:
                store.close()


class Context:
    def __init__(self, app: faust.App, settings: Settings, codec: Codec, storage: Storage, metrics: Metrics):
        self.app = app
        self.settings = settings
        self.codec = codec
        self.storage = storage
        self.metrics = metrics
        self.log = log
        self._topics: dict[tuple, Any] = {}
        self.stores = Stores(settings)
        self.ready_checks: list[Any] = []

    def topic(self, *names: str):
        """The Faust topic (or multi-topic channel) for topology names; created once per name set."""
        key = tuple(names)
        if key not in self._topics:
            for n in names:
                if n not in TOPICS:
                    raise KeyError(f"topic {n!r} is not in the topology")
            self._topics[key] = self.app.topic(*(self.settings.topic(n) for n in names), key_type=bytes,
                                               value_type=bytes, key_serializer="raw", value_serializer="raw",
                                               partitions=self.settings.partitions, acks=True)
        return self._topics[key]

    async def send(self, topic: str, image_id: str, record_name: str, record: dict) -> None:
        value = self.codec.encode(record_name, record, topic=self.settings.topic(topic))
        await self.topic(topic).send(key=image_id.encode(), value=value)

    async def dead_letter(self, stage: str, event, verdict: Verdict, attempts: int = 1, image_id: str | None = None) -> None:
        msg = event.message
        record = {"stage": stage, "topic": msg.topic, "partition": msg.partition, "offset": msg.offset,
                  "key": msg.key, "value": msg.value or b"", "image_id": image_id,
                  "error": verdict.as_error(attempts), "failed_at": now()}
        self.metrics.deadletters.labels(stage, verdict.code).inc()
        log.error("dead_letter", stage=stage, image_id=image_id, code=verdict.code, reason=verdict.message,
                  topic=msg.topic, partition=msg.partition, offset=msg.offset)
        key = (image_id or (msg.key.decode("utf-8", "replace") if msg.key else f"{msg.topic}/{msg.partition}/{msg.offset}"))
        await self.send(DEADLETTER, key, "DeadLetter", record)


def use_event(event) -> None:
    """Make ``event`` Faust's *current event* for this task, so a table write inside a take() batch lands
    in that event's partition store (the rocksdb store picks its partition from the current event).

    Only the context variable is set. ``Stream._set_current_event`` would also overwrite the stream's
    ``current_event`` attribute, which take()'s background buffer-filler reads to record each new
    event: setting it from the batch body races with that filler and silently swaps events out of
    the batch (seen as lost records before this helper existed).
    """
    from faust.streams import _current_event

    _current_event.set(weakref.ref(event))


def build(settings: Settings, stages: list[str] | None = None) -> tuple[faust.App, Context]:
    stages = list(stages or RUNNABLE)
    unknown = [s for s in stages if s not in RUNNABLE]
    if unknown:
        raise ValueError(f"cannot run stage(s) {unknown}; runnable: {list(RUNNABLE)}")
    batch = settings.batch_size
    (settings.data_path / "faust").mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(",")],
        store="rocksdb://",
        datadir=str(settings.data_path / "faust"),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=max(4 * batch, 64),
        broker_max_poll_records=max(2 * batch, 32),
        producer_acks=-1,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_in_thread=True,
        web_tables_enabled=False,
        table_cleanup_interval=30.0,
    )
    metrics = Metrics()
    ctx = Context(app, settings, Codec(registry_url=settings.schema_registry_url), Storage(settings.roots), metrics)
    modules: dict[str, list[str]] = {}
    for name in stages:  # stages sharing a module (one network, several results) register once
        modules.setdefault(STAGES[name].module, []).append(name)
    for module, names in modules.items():
        importlib.import_module(f"lensflow.agents.{module}").register(ctx, names)
    if ctx.stores.wanted:
        _open_stores(app, ctx)
    _web(app, ctx, stages)
    return app, ctx


def _open_stores(app: faust.App, ctx: Context) -> None:
    import asyncio

    import mode

    from .errors import fatal

    @app.task
    async def open_stores() -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, ctx.stores.open)
        except Exception as exc:
            fatal(f"cannot open the stores: {exc}", exc, code=3)
        ctx.stores.ready.set()

    @app.service
    class CloseStores(mode.Service):
        async def on_stop(self) -> None:
            ctx.stores.close()

    ctx.ready_checks.append(("stores", ctx.stores.ready.is_set))


def _web(app: faust.App, ctx: Context, stages: list[str]) -> None:
    from faust.web import Request, Response, View

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(ctx.metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"ok": True, "stages": stages})

    if {"cassandra", "qdrant"} <= ctx.stores.wanted:
        _store_views(app, ctx)

    # Readiness is computed on the worker's own event loop and only *read* by the web thread
    # (web_in_thread=True): touching app.tables from the web thread would create Faust services
    # bound to the wrong event loop ("Future attached to a different loop" at start-up).
    state: dict[str, Any] = {"ready": False, "recovered": False, "rebalancing": True}

    @app.timer(1.0)
    async def _readiness() -> None:
        recovered = app.tables.recovery.completed.is_set()
        checks = {name: bool(fn()) for name, fn in ctx.ready_checks}
        state.update(recovered=recovered, rebalancing=bool(app.rebalancing), **checks,
                     ready=recovered and not app.rebalancing and all(checks.values()))

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            snapshot = dict(state)
            return self.json(snapshot, status=200 if snapshot["ready"] else 503)


def _store_views(app: faust.App, ctx: Context) -> None:
    """Search and the face gallery, served by the worker that owns the stores (Qdrant local mode
    admits one process). Views run in Faust's web thread; store calls go to the stores' own threads."""
    import base64
    import io

    from faust.web import Request, Response, View

    from .search import Query, SearchError, SearchService

    service = SearchService(ctx.stores, ctx.settings)
    face_model: dict[str, Any] = {}

    def not_ready() -> str | None:
        return None if ctx.stores.ready.is_set() else "stores are not open yet"

    @app.page("/search")
    class Search(View):
        async def get(self, request: Request) -> Response:
            if not_ready():
                return self.json({"error": not_ready()}, status=503)
            try:
                q = Query.parse(dict(request.query))
                return self.json({"results": service.search(q)})
            except SearchError as exc:
                return self.json({"error": str(exc)}, status=400)

    def faces_in(data: bytes) -> list[dict]:
        from PIL import Image, ImageOps

        from lensflow.agents.faces import FaceModel

        from .models import ModelCache

        if "model" not in face_model:
            face_model["model"] = FaceModel(ModelCache(ctx.settings.cache_path / "models"),
                                            max_side=ctx.settings.faces_detect_max_side).load()
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        return face_model["model"].predict([img])[0]

    @app.page("/faces/enroll")
    class Enroll(View):
        async def post(self, request: Request) -> Response:
            from lensflow.agents.faces import FaceGallery

            if not_ready():
                return self.json({"error": not_ready()}, status=503)
            body = await request.json()
            user, name = body.get("user"), body.get("name")
            if not user or not name or not body.get("images"):
                return self.json({"error": "user, name and images are required"}, status=400)
            enrolled = []
            for i, b64 in enumerate(body["images"]):
                faces = faces_in(base64.b64decode(b64))
                if not faces:
                    return self.json({"error": f"no face found in image {i + 1}"}, status=400)
                largest = max(faces, key=lambda f: (f["box"]["x2"] - f["box"]["x1"]) * (f["box"]["y2"] - f["box"]["y1"]))
                enrolled.append(ctx.stores.qdrant.run(lambda c: FaceGallery(c).enroll(user, name, largest["encoding"])))
            return self.json({"person_id": enrolled[0], "faces": len(enrolled)})

    @app.page("/faces/name")
    class Name(View):
        async def post(self, request: Request) -> Response:
            from lensflow.agents.faces import FaceGallery

            if not_ready():
                return self.json({"error": not_ready()}, status=503)
            body = await request.json()
            user, person, name = body.get("user"), body.get("person_id"), body.get("name")
            if not user or not person or not name:
                return self.json({"error": "user, person_id and name are required"}, status=400)
            changed = ctx.stores.qdrant.run(lambda c: FaceGallery(c).rename(user, person, name))
            if not changed:
                return self.json({"error": f"person {person} not found for user {user}"}, status=404)
            return self.json({"person_id": person, "name": name, "faces": changed})
