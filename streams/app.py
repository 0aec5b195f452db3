"""The one Faust app of a lensflow worker, and the context every agent is built with.

``build(settings, stages)`` makes a ``faust.App`` configured from settings (the consumer group,
guarantees, batching and buffer sizes, state store, web endpoint), then asks each selected stage's
module to ``register(ctx)`` its agent. Agents get everything through ``Context``: the codec, the
storage, the metrics, the topics by name, ``send`` (Avro-encode + produce, keyed by image id) and
the stores. Stages run on ``streams/runner.py``. Nothing is registered at import time, so
``--stages`` really selects what runs, and the consumer group is the stages' group
(``topology.consumer_group``).

Choices, read from faust-streaming 0.15.3's source:
* values are ``raw`` bytes decoded by lensflow's codec inside try/except: a Faust codec that fails
  crashes the agent;
* ``stream_buffer_maxsize`` and ``broker_max_poll_records`` are a few batches, not 4096 records;
* agent ``concurrency=1`` (Faust can commit past in-flight messages otherwise: faust-streaming issue
  606); stages parallelise inside a batch instead;
* the consumer commits a partition's offsets only up to its first un-acknowledged one (faust's own
  rule can skip it: ``streams/offsets.py``);
* ``web_tables_enabled`` is off (it would serve table contents over HTTP);
* tables use ``rocksdb://`` so a restart does not replay whole changelogs, and their changelog
  partition is chosen by key (``use_partitioner``) because take() batches span partitions.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import weakref
from pathlib import Path
from typing import Any

import faust
import structlog

from .codec import Codec
from .observability import Metrics
from .settings import Settings
from .storage import Storage
from .security import cassandra_options, faust_credentials
from .topology import RUNNABLE, STAGES, TOPICS, consumer_group, split_problem

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
        from .store import CassandraStore, QdrantStore

        s = self.settings
        if "cassandra" in self.wanted:
            self.cassandra = CassandraStore(s.cassandra_hosts, s.cassandra_port, s.cassandra_keyspace,
                                            **cassandra_options(s))
        if "qdrant" in self.wanted:
            self.qdrant = QdrantStore(s.qdrant_url, s.qdrant_path, s.qdrant_api_key.get_secret_value() if s.qdrant_api_key else None)

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

    async def produce(self, topic: str, image_id: str, record_name: str, record: dict) -> "asyncio.Future":
        """Avro-encode ``record`` and hand it to the producer, keyed by image id; returns the future of
        its delivery report (await it before acking the input: see ``streams/runner.py``)."""
        name = self.settings.topic(topic)
        if not self.codec.registered(record_name, name):  # a registry request: never on the event loop
            await asyncio.get_running_loop().run_in_executor(None, self.codec.register, record_name, name)
        value = self.codec.encode(record_name, record, topic=name)
        return await self.topic(topic).send(key=image_id.encode(), value=value)

    async def send(self, topic: str, image_id: str, record_name: str, record: dict) -> None:
        """Produce one record and wait until the broker has it (for code outside a stage runner)."""
        await (await self.produce(topic, image_id, record_name, record))


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
    problem = split_problem(stages, settings.qdrant_url)
    if problem:
        raise ValueError(problem)
    group = consumer_group(settings.app_id, stages, settings.group)
    datadir = faust_datadir(settings, group)
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        group,
        broker=[f"kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(",")],
        store="rocksdb://",
        datadir=str(datadir),
        autodiscover=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=settings.group_instance_id,
        broker_credentials=faust_credentials(settings),
        broker_session_timeout=settings.session_timeout_s,
        stream_buffer_maxsize=max(4 * batch, 64),
        broker_max_poll_records=max(2 * batch, 32),
        producer_acks=-1,  # acks=all: aiokafka refuses idempotence with anything else (see _idempotent_transport)
        producer_linger=settings.producer_linger_ms / 1000,
        web_enabled=True,
        # aiohttp's Application defaults to client_max_size=1 MiB (a 3.9 MB photo got 413 from /faces/enroll);
        # faust's aiohttp driver passes these kwargs straight to Application(...) (faust/web/drivers/aiohttp.py, Web.__init__)
        web_application_options={"client_max_size": web_client_max_size(settings)},
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_in_thread=True,
        web_tables_enabled=False,
        table_cleanup_interval=30.0,
    )
    app.transport = _idempotent_transport(app)  # before anything creates the producer or the conductor
    metrics = Metrics()
    _faust_sensor(app, metrics)
    ctx = Context(app, settings, Codec.for_settings(settings), Storage(settings.roots, allow_private_redirects=settings.storage_allow_private_redirects, per_user=settings.per_user_storage, home=settings.storage if settings.storage in settings.roots else None), metrics)
    modules: dict[str, list[str]] = {}
    for name in stages:  # stages sharing a module (one network, several results) register once
        modules.setdefault(STAGES[name].module, []).append(name)
    for module, names in modules.items():
        importlib.import_module(f"lensflow.agents.{module}").register(ctx, names)
    _changelog_config(app, settings)
    if ctx.stores.wanted:
        _open_stores(app, ctx)
    _web(app, ctx, stages)
    return app, ctx


def faust_datadir(settings: Settings, group: str) -> "Path":
    """Where a worker of consumer group ``group`` keeps its local state (Faust's tables in RocksDB, with
    the changelog offsets they were restored to): ``DATA_DIR/faust/<group>``. One folder per group, so
    any mix of stage groups can run on one machine in any order: with one folder for every group, a
    join started as its own group after an all-in-one worker reopened that worker's RocksDB and Faust
    stopped it with ``ConsistencyError`` (persisted offset 257 > highwater -1 of its own, empty changelog)."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", group) or group in (".", ".."):
        raise ValueError(f"consumer group {group!r} cannot name a folder (letters, digits, '.', '_', '-')")
    return settings.data_path / "faust" / group


def web_client_max_size(settings: Settings) -> int:
    """Largest request body the worker's web server reads (aiohttp ``client_max_size``): one ``max_bytes``
    image base64-encoded (4 bytes per 3) in a JSON body, plus 1 MiB of slack for the rest of the body."""
    return 4 * -(-settings.max_bytes // 3) + (1 << 20)


def _idempotent_transport(app: faust.App):
    """Faust's aiokafka transport for ``app``, whose consumer commits only offsets every agent acknowledged
    (``streams/offsets.py``) and whose producer is idempotent (``enable_idempotence=True``,
    ``acks="all"``: aiokafka raises ValueError for idempotence with acks 0 or 1).

    faust-streaming 0.15.3 has no setting for it: the aiokafka driver's ``Producer._settings_extra``
    returns ``{"acks": "all", "enable_idempotence": True}`` only inside a transaction
    (processing_guarantee="exactly_once"), and ``Producer._new_producer`` merges ``_settings_extra()``
    last into the AIOKafkaProducer kwargs (faust/transport/drivers/aiokafka.py); the threaded producer
    uses the same ``_settings_extra``. ``Transport.create_producer`` instantiates the transport's
    ``Producer`` class attribute (faust/transport/base.py), and ``app.producer`` comes from
    ``app.transport.create_producer``. So: a Producer subclass overriding only ``_settings_extra``, on a
    Transport subclass, installed through the public ``App.transport`` setter right after the App is
    made (the transport resolves its event loop lazily, so making it here is safe).
    """
    from faust.transport.drivers import aiokafka as driver

    class IdempotentProducer(driver.Producer):
        def _settings_extra(self):
            return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    IdempotentProducer.logger = driver.Producer.logger  # mode names a subclass's logger after its module

    from .offsets import consumer_class

    class IdempotentTransport(driver.Transport):
        Producer = IdempotentProducer
        Consumer = consumer_class(driver.Consumer)  # commits never skip an un-acknowledged offset (streams/offsets.py)

    return IdempotentTransport(app.conf.broker_consumer, app)


def _changelog_config(app: faust.App, settings: Settings) -> None:
    """``min.insync.replicas`` on the changelog topics Faust creates for the stages' tables.

    faust 0.15.3 has no app-wide setting for the config of its internal topics; a table takes
    ``extra_topic_configs`` (faust/tables/base.py ``_new_changelog_topic``: ``config=``), and
    ``app.Table()`` builds its changelog topic at once (faust/tables/manager.py ``TableManager.add``).
    So the config is merged into both once the stages have registered, before the worker starts and
    declares the topics; a table's own values win. It applies only when Faust *creates* a changelog:
    an existing one keeps its config. Faust's leader topic (``<app_id>-__assignor-__leader``) is not
    covered (no table; it carries no data lensflow needs).
    """
    from .kafka import topic_config

    extra = topic_config(settings)
    for table in app.tables.values():
        table.extra_topic_configs = {**extra, **(table.extra_topic_configs or {})}
        table.changelog_topic.config = {**extra, **(table.changelog_topic.config or {})}


def _faust_sensor(app: faust.App, metrics: Metrics) -> None:
    """Faust's own Prometheus sensor (rebalances, committed offsets, topic/partition end offsets, events
    and sends per topic, table operations) on lensflow's registry, so /metrics serves both. The prefix is
    ``faust_`` for every group (not the app id), so dashboards and alerts need no per-group names."""
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(metrics.registry, "faust"))


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


#: /healthz answers 503 once the worker's event loop has not run its heartbeat for this many seconds, and
#: /readyz once its snapshot (made by the same heartbeat) is this old: the loop is blocked or gone.
LIVENESS_THRESHOLD_S = 10.0


def liveness(last_beat: float | None, now: float, threshold: float = LIVENESS_THRESHOLD_S) -> tuple[bool, float | None]:
    """(alive, lag): ``lag`` is how long ago the heartbeat last ran (``time.monotonic()`` values; None when
    it never ran, which counts as not alive); alive while the lag is at most ``threshold`` seconds."""
    if last_beat is None:
        return False, None
    lag = max(0.0, now - last_beat)
    return lag <= threshold, lag


def _web(app: faust.App, ctx: Context, stages: list[str]) -> None:
    """/metrics, /healthz, /readyz (and the store views). They run in Faust's web thread (web_in_thread=True),
    which answers even while the worker's event loop is blocked, so both probes judge the worker's loop
    by a heartbeat it runs every second:

    * /healthz: 200 ``{"ok": true, "loop_lag_s": …}`` while the last beat is at most
      ``LIVENESS_THRESHOLD_S`` (10 s) old, else 503 ``{"ok": false, "loop_lag_s": …}``;
    * /readyz: the readiness snapshot the heartbeat made (``recovered``, ``rebalancing``, one key per
      ``ctx.ready_checks`` entry: ``(name, callable)``, true when that part is ready) plus ``age_s``;
      200 when ``ready``, 503 when not or when the snapshot is over ``LIVENESS_THRESHOLD_S`` old (``stale``).

    The heartbeat is a mode Service made the App's first dependency, so it beats from the moment the
    App starts: an ``@app.timer`` only starts after table recovery (faust/app/base.py ``App.on_started``),
    and a long recovery would then fail the liveness/startup probes instead of just keeping the pod unready.
    """
    import time

    import mode
    from faust.web import Request, Response, View

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(ctx.metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            ok, lag = liveness(state["beat"], time.monotonic(), LIVENESS_THRESHOLD_S)
            return self.json({"ok": ok, "loop_lag_s": None if lag is None else round(lag, 3), "stages": stages},
                             status=200 if ok else 503)

    if {"cassandra", "qdrant"} <= ctx.stores.wanted:
        _store_views(app, ctx)

    # Readiness is computed on the worker's own event loop and only *read* by the web thread
    # (web_in_thread=True): touching app.tables from the web thread would create Faust services
    # bound to the wrong event loop ("Future attached to a different loop" at start-up).
    # The heartbeat replaces whole values (one assignment each), so a reader never sees half an update.
    state: dict[str, Any] = {"beat": None, "readiness": (None, {"ready": False, "recovered": False, "rebalancing": True})}
    failed: dict[str, str] = {}

    def readiness() -> dict[str, Any]:
        checks = {}
        for name, fn in ctx.ready_checks:
            try:
                checks[name] = bool(fn())
            except Exception as exc:  # a failing check means not ready; it must not stop the heartbeat
                checks[name] = False
                if failed.get(name) != repr(exc):
                    failed[name] = repr(exc)
                    log.warning("ready_check_failed", check=name, error=repr(exc))
        recovered = app.tables.recovery.completed.is_set()
        rebalancing = bool(app.rebalancing)
        return {"recovered": recovered, "rebalancing": rebalancing, **checks,
                "ready": recovered and not rebalancing and all(checks.values())}

    class Heartbeat(mode.Service):
        @mode.Service.timer(1.0, exec_first=True)
        async def _beat(self) -> None:
            beat = time.monotonic()
            state["beat"] = beat
            try:
                state["readiness"] = (beat, readiness())
            except Exception as exc:  # keep beating: /readyz reports the stale snapshot's age
                if failed.get("") != repr(exc):
                    failed[""] = repr(exc)
                    log.warning("readiness_failed", error=repr(exc))

    app.add_dependency(Heartbeat())  # its first child: started before the producer, consumer and tables

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            at, snapshot = state["readiness"]
            fresh, age = liveness(at, time.monotonic(), LIVENESS_THRESHOLD_S)
            snapshot = {**snapshot, "age_s": None if age is None else round(age, 3)}
            if not fresh:
                snapshot.update(ready=False, stale=True)
            return self.json(snapshot, status=200 if snapshot["ready"] else 503)


def is_loopback(host: str) -> bool:
    """Whether the web server's bind address is loopback only: 127.0.0.0/8, ::1 or "localhost"."""
    import ipaddress

    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost (or 0.0.0.0-like "any" names): not loopback
        return False


def _host_name(host: str | None) -> str | None:
    """The name in a Host header ("name", "name:port", "[v6]", "[v6]:port"); None when absent or malformed."""
    host = (host or "").strip()
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
        return name or None
    name, colon, port = host.partition(":")
    if colon and not port.isdigit():
        return None
    return name or None


def _loopback_origin(origin: str) -> bool:
    """Whether an Origin header names an http(s) page served from a loopback address ("null" does not)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin.strip())
        parts.port  # noqa: B018  (ValueError for a port that is not a number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and is_loopback(parts.hostname)


def api_refusal(settings: Settings, authorization: str | None, host: str | None = None,
                origin: str | None = None) -> tuple[int, str] | None:
    """Who may use the worker's API (/search, /faces/*): None when the request may proceed, else the
    (HTTP status, one-line error) to answer. With ``settings.api_token`` set, the request must carry
    ``Authorization: Bearer <token>`` (compared in constant time), 401 otherwise. Without a token, the API
    answers only on a loopback bind address (127.0.0.0/8, ::1, localhost), 403 otherwise, and only requests
    whose ``host`` (the Host header) names a loopback address and whose ``origin`` (the Origin header), if
    any, is a page served from one, 403 otherwise: a web page open on the same machine must not reach it,
    neither under its own name resolved to 127.0.0.1 (DNS rebinding) nor by posting to 127.0.0.1. The token
    is never part of a message."""
    import hmac

    token = settings.api_token.get_secret_value().strip() if settings.api_token is not None else ""
    if not token:
        if not is_loopback(settings.web_host):
            return 403, (f"the worker's API is off: it listens on {settings.web_host} (not loopback) and has no "
                         "token; set LENSFLOW_API_TOKEN on the worker and for the CLI")
        name = _host_name(host)
        if name is None or not is_loopback(name):
            return 403, ("the worker's API (no LENSFLOW_API_TOKEN) answers only requests whose Host is a loopback "
                         "address (127.0.0.1, [::1] or localhost)")
        if origin is not None and not _loopback_origin(origin):
            return 403, ("the worker's API (no LENSFLOW_API_TOKEN) refuses requests from web pages of another "
                         "Origin; set LENSFLOW_API_TOKEN to serve other clients")
        return None
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, "missing API token: send Authorization: Bearer <LENSFLOW_API_TOKEN>"
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")):
        return 401, "wrong API token (LENSFLOW_API_TOKEN differs from the worker's)"
    return None


class ImageRejected(ValueError):
    """An uploaded image refused before decoding; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def open_checked(data: bytes, max_bytes: int, max_pixels: int):
    """``data`` opened as a PIL image after the limits are checked, before anything decodes it:
    over ``max_bytes`` → ImageRejected 413; unreadable, or a header over ``max_pixels`` → 400.
    ``Image.open`` only reads the header (decoding waits for ``load()``), so ``size`` costs nothing."""
    import io

    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise ImageRejected(413, f"{len(data) / 1e6:.1f} MB is over the limit of {max_bytes / 1e6:.1f} MB "
                                 "(LENSFLOW_MAX_BYTES)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's own cap (2x MAX_IMAGE_PIXELS), checked in open()
        raise ImageRejected(400, f"too many pixels: over the limit of {max_pixels} (LENSFLOW_MAX_PIXELS)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageRejected(400, f"not a readable image ({type(exc).__name__})") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageRejected(400, f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels} (LENSFLOW_MAX_PIXELS)")
    return img


#: seconds an API request waits for the stores (a free store thread, then the call) before answering 503:
#: the Cassandra driver's own request timeout (streams/store.py connect_cassandra)
API_STORE_TIMEOUT_S = 10.0
#: seconds an API request waits for the models (a free model thread, then a decode or an inference),
#: loading a model the first time included, before answering 503
API_MODEL_TIMEOUT_S = 60.0
#: threads of the API's store calls: at most this many requests wait on a frozen store at once
API_STORE_THREADS = 4
#: threads of the API's decodes and inferences (each decode is admitted against the decode budget too)
API_MODEL_THREADS = 1
#: what a 503 of the API suggests (Retry-After, seconds)
API_RETRY_AFTER_S = 5


class Unavailable(Exception):
    """The API gave up waiting for the stores or the models: answered 503 with this message."""


class Offload:
    """Runs the API's blocking calls (store queries, decodes, inference) off the event loop of the web
    thread, which also answers /healthz and Faust's thread keepalive, on ``threads`` threads of its own.

    At most ``threads`` calls run at once: a call first waits for a free thread, then for its result,
    ``timeout_s()`` seconds in all (a callable, read at each call), else raises ``Unavailable`` naming
    ``what``. A call given up on is not stopped (Python cannot stop a thread): it keeps its thread until
    it returns, and only then is the thread free again, so a frozen store holds ``threads`` threads and
    every later request answers 503 once its own deadline passes, never queueing without end."""

    def __init__(self, name: str, threads: int, timeout_s, what: str):
        from concurrent.futures import ThreadPoolExecutor

        self.threads = threads
        self.timeout_s = timeout_s
        self.what = what
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"api-{name}")
        self._free = None  # asyncio.Semaphore of the web thread's loop, made there on first use

    async def __call__(self, fn, *args):
        import asyncio

        loop = asyncio.get_running_loop()
        if self._free is None:
            self._free = asyncio.Semaphore(self.threads)
        timeout = self.timeout_s()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self._free.acquire(), timeout)
        except asyncio.TimeoutError:
            raise Unavailable(f"{self.what} did not answer within {timeout:g} s (every thread of the API waits "
                              "on earlier requests)") from None
        try:
            future = loop.run_in_executor(self.pool, fn, *args)
        except BaseException:
            self._free.release()
            raise
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise Unavailable(f"{self.what} did not answer within {timeout:g} s") from None

    def _done(self, future) -> None:
        self._free.release()
        if not future.cancelled():
            future.exception()  # retrieved: a call given up on must not log "exception was never retrieved"


def _store_of(exc: BaseException) -> str:
    module = type(exc).__module__ or ""
    if module.startswith("cassandra"):
        return "Cassandra"
    if module.startswith(("qdrant_client", "grpc", "httpx", "httpcore")):
        return "Qdrant"
    return "a store"


def _store_views(app: faust.App, ctx: Context) -> None:
    """Search and the face gallery, served by the worker that owns the stores (Qdrant local mode
    admits one process). Views run in Faust's web thread, whose event loop also answers /healthz and
    Faust's thread keepalive, so nothing there blocks: store calls run on the API's store threads,
    decodes and inference on its model thread (``Offload``), each with a deadline. A store that does not
    answer in time, or fails with an outage (``errors.is_transient``), is answered 503 with a JSON error
    and ``Retry-After``; any other failure 500 with a JSON error (logged with its traceback).

    Every view first passes ``denied`` (``api_refusal``: bearer token, or loopback Host and Origin when no
    token; and a POST body must be sent as ``application/json``, which a web page cannot do without a
    CORS preflight the worker never answers)."""
    import base64
    import threading

    from aiohttp.web import HTTPRequestEntityTooLarge
    from faust.web import Request, Response, View

    from .errors import StageFailure, is_transient
    from .records import check_user_id
    from .search import Query, SearchError, SearchService

    service = SearchService(ctx.stores, ctx.settings)
    stores = Offload("stores", API_STORE_THREADS, lambda: API_STORE_TIMEOUT_S, "Cassandra or Qdrant")
    models = Offload("models", API_MODEL_THREADS, lambda: API_MODEL_TIMEOUT_S, "the models")
    face_model: dict[str, Any] = {}
    model_lock = threading.Lock()
    if ctx.settings.api_token is None or not ctx.settings.api_token.get_secret_value():
        if not is_loopback(ctx.settings.web_host):
            log.warning("api_off", web_host=ctx.settings.web_host,
                        reason="LENSFLOW_API_TOKEN is not set and the worker does not listen on loopback: "
                               "/search and /faces/* answer 403 until it is set")

    def denied(view: View, request: Request, json_body: bool = False) -> Response | None:
        """The one access check of the API views: None when ``request`` may proceed, else the answer."""
        refusal = api_refusal(ctx.settings, request.headers.get("Authorization"), host=request.headers.get("Host"),
                              origin=request.headers.get("Origin"))
        if refusal is not None:
            status, message = refusal
            return view.json({"error": message}, status=status,
                             headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)
        if json_body and request.content_type != "application/json":
            return view.json({"error": "send the body as JSON, with Content-Type: application/json"}, status=415)
        if not ctx.stores.ready.is_set():
            return unavailable(view, "stores are not open yet")
        return None

    def unavailable(view: View, message: str) -> Response:
        return view.json({"error": message}, status=503, headers={"Retry-After": str(API_RETRY_AFTER_S)})

    async def answer(view: View, request: Request, work) -> Response:
        """``await work()``, or the JSON error it came to: 400 for a bad query, the status of a refused
        image, 503 when the stores or the models are down or busy, 500 for anything else."""
        try:
            return await work()
        except SearchError as exc:
            return view.json({"error": str(exc)}, status=400)
        except ImageRejected as exc:
            return view.json({"error": str(exc)}, status=exc.status)
        except Unavailable as exc:
            log.warning("api_unavailable", path=request.path, reason=str(exc))
            return unavailable(view, str(exc))
        except Exception as exc:
            if is_transient(exc):
                reason = (str(exc).strip().splitlines() or [""])[0][:200]
                log.warning("api_unavailable", path=request.path, error=repr(exc)[:500])
                return unavailable(view, f"{_store_of(exc)} is unavailable ({type(exc).__name__}: {reason})")
            log.exception("api_failed", path=request.path, error=repr(exc)[:500])
            return view.json({"error": f"internal error ({type(exc).__name__}); see the worker's log"}, status=500)

    async def json_object(view: View, request: Request) -> tuple[dict | None, Response | None]:
        """The request's JSON object body, or the 4xx answer (413 too large, 400 not a JSON object)."""
        try:
            body = await request.json()
        except HTTPRequestEntityTooLarge:  # over web_client_max_size (aiohttp's client_max_size)
            return None, view.json({"error": f"request body over the worker's limit of {request.client_max_size / 1e6:.1f} MB: "
                                             "send fewer photos per request (each at most LENSFLOW_MAX_BYTES)"}, status=413)
        except ValueError:
            return None, view.json({"error": "the request body is not JSON"}, status=400)
        if not isinstance(body, dict):
            return None, view.json({"error": "the request body is not a JSON object"}, status=400)
        return body, None

    def bad_user(view: View, user: str) -> Response | None:
        try:
            check_user_id(user)
        except StageFailure as exc:
            return view.json({"error": f"user: {exc.message}"}, status=400)
        return None

    @app.page("/search")
    class Search(View):
        async def get(self, request: Request) -> Response:
            if (refused := denied(self, request)) is not None:
                return refused

            async def work() -> Response:
                q = Query.parse(dict(request.query))
                vector = await models(service.embed, q.text) if q.text else None
                return self.json({"results": await stores(service.search, q, vector)})

            return await answer(self, request, work)

    def loaded_face_model():
        """(model thread) The faces stage's model (LENSFLOW_FACES_MODEL): enrolments and the stage share one
        encoding space."""
        from lensflow.agents.faces import face_model as make_face_model

        from .models import ModelCache

        with model_lock:
            if "model" not in face_model:
                face_model["model"] = make_face_model(ctx.settings, ModelCache(ctx.settings.models_path)).load()
            return face_model["model"]

    def faces_in(b64: str, number: int) -> list[dict]:
        """(model thread) The faces found in one uploaded image (base64). Its header is checked first
        (ImageRejected: bytes, pixels); then it is normalised as an upload is (``prepare``: oriented, RGB,
        long side at most LENSFLOW_MAX_SIDE) under the worker's decode budget and decode timeout, and the
        model runs on that derivative, as the faces stage does, its decode admitted against the budget too."""
        import io

        from PIL import Image

        from lensflow.agents.preprocess import Limits, decode_cost, prepare

        from .budget import decode_budget

        try:
            data = base64.b64decode(b64)
        except (ValueError, TypeError):  # binascii.Error is a ValueError
            raise ImageRejected(400, f"image {number} is not base64") from None
        try:
            open_checked(data, ctx.settings.max_bytes, ctx.settings.max_pixels).close()  # header only
            budget = decode_budget(ctx)
            outcome = prepare(data, Limits.from_settings(ctx.settings), budget)
            if outcome.error is not None:
                code = str(outcome.error.code)
                if code == "decode_timeout":
                    raise Unavailable(f"image {number}: {outcome.error.message}")
                raise ImageRejected(413 if code in ("too_large", "over_memory_budget") else 400, outcome.error.message)
            img = Image.open(io.BytesIO(outcome.derivative if outcome.derivative is not None else data))
            model = loaded_face_model()
            with budget.reserve(decode_cost(img, "JPEG", img.size, reuse=True), what="enrolment photo"):
                return model.predict([img.convert("RGB")])[0]
        except ImageRejected as exc:
            raise ImageRejected(exc.status, f"image {number}: {exc}") from None
        except StageFailure as exc:  # the budget: over_memory_budget
            raise ImageRejected(413, f"image {number}: {exc.message}") from None

    def enroll(user: str, name: str, encodings: list, model_name: str) -> list[str]:
        """(store thread) Enrol each encoding as a reference face of ``name``."""
        from lensflow.agents.faces import FaceGallery

        return [ctx.stores.qdrant.run(lambda c, e=e: FaceGallery(c, model=model_name).enroll(user, name, e))
                for e in encodings]

    def rename(user: str, person: str, name: str) -> int:
        """(store thread) Name a clustered person; the number of faces renamed."""
        from lensflow.agents.faces import FaceGallery

        return ctx.stores.qdrant.run(lambda c: FaceGallery(c).rename(user, person, name))

    def area(face: dict) -> float:
        box = face["box"]
        return (box["x2"] - box["x1"]) * (box["y2"] - box["y1"])

    @app.page("/faces/enroll")
    class Enroll(View):
        async def post(self, request: Request) -> Response:
            if (refused := denied(self, request, json_body=True)) is not None:
                return refused
            body, refused = await json_object(self, request)
            if refused is not None:
                return refused
            user, name, images = body.get("user"), body.get("name"), body.get("images")
            if not (isinstance(user, str) and isinstance(name, str) and name.strip() and isinstance(images, list)
                    and images and all(isinstance(i, str) for i in images)):
                return self.json({"error": "user, name and images (a list of base64 strings) are required"}, status=400)
            if (refused := bad_user(self, user)) is not None:
                return refused

            async def work() -> Response:
                largest = []  # every image is checked before anything is enrolled
                for i, b64 in enumerate(images, start=1):
                    faces = await models(faces_in, b64, i)
                    if not faces:
                        return self.json({"error": f"no face found in image {i}"}, status=400)
                    largest.append(max(faces, key=area))
                model_name = face_model["model"].name
                enrolled = await stores(enroll, user, name, [f["encoding"] for f in largest], model_name)
                return self.json({"person_id": enrolled[0], "faces": len(enrolled)})

            return await answer(self, request, work)

    @app.page("/faces/name")
    class Name(View):
        async def post(self, request: Request) -> Response:
            if (refused := denied(self, request, json_body=True)) is not None:
                return refused
            body, refused = await json_object(self, request)
            if refused is not None:
                return refused
            user, person, name = body.get("user"), body.get("person_id"), body.get("name")
            if not all(isinstance(v, str) and v.strip() for v in (user, person, name)):
                return self.json({"error": "user, person_id and name (strings) are required"}, status=400)
            if (refused := bad_user(self, user)) is not None:
                return refused

            async def work() -> Response:
                changed = await stores(rename, user, person, name)
                if not changed:
                    return self.json({"error": f"person {person} not found for user {user}"}, status=404)
                return self.json({"person_id": person, "name": name, "faces": changed})

            return await answer(self, request, work)
