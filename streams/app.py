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
import ipaddress
import re
import time
from pathlib import Path
from typing import Any

import faust
import mode
import structlog
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.transport.drivers import aiokafka as driver
from faust.web import Request, Response, View

from .avro_types import AvroRecord
from .codec import Codec
from .errors import fatal
from .kafka import topic_config
from .observability import Metrics
from .offsets import consumer_class
from .security import cassandra_options, faust_credentials
from .settings import Settings
from .storage import Storage
from .store import CassandraStore, QdrantStore
from .topology import RUNNABLE, STAGES, TOPICS, consumer_group, split_problem

log = structlog.get_logger("lensflow")


class Stores:
    """The store clients of one worker process, opened once at start-up, before any agent consumes.

    Stages ask for what they need (``want``) while registering; Qdrant local mode admits one opener
    per folder, so every stage of a process shares these clients (the join's sinks, the faces
    gallery). A store that cannot be opened stops the worker with a clear message.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.wanted: set[str] = set()
        self.cassandra = None
        self.qdrant = None
        self.ready = asyncio.Event()

    def want(self, *names: str) -> None:
        self.wanted.update(names)

    def open(self) -> None:
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

    async def produce(self, topic: str, image_id: str, record_name: str, record: AvroRecord) -> "asyncio.Future":
        """Avro-encode ``record`` (its generated type, ``avro_types.py``) and hand it to the producer,
        keyed by image id; returns the future of its delivery report (await it before acking the input:
        see ``streams/runner.py``)."""
        name = self.settings.topic(topic)
        if not self.codec.registered(record_name, name):  # a registry request: never on the event loop
            await asyncio.get_running_loop().run_in_executor(None, self.codec.register, record_name, name)
        value = self.codec.encode(record_name, record, topic=name)
        return await self.topic(topic).send(key=image_id.encode(), value=value)

    async def send(self, topic: str, image_id: str, record_name: str, record: AvroRecord) -> None:
        """Produce one record and wait until the broker has it (for code outside a stage runner)."""
        await (await self.produce(topic, image_id, record_name, record))


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
    class IdempotentProducer(driver.Producer):
        def _settings_extra(self):
            return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    IdempotentProducer.logger = driver.Producer.logger  # mode names a subclass's logger after its module

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
    extra = topic_config(settings)
    for table in app.tables.values():
        table.extra_topic_configs = {**extra, **(table.extra_topic_configs or {})}
        table.changelog_topic.config = {**extra, **(table.changelog_topic.config or {})}


def _faust_sensor(app: faust.App, metrics: Metrics) -> None:
    """Faust's own Prometheus sensor (rebalances, committed offsets, topic/partition end offsets, events
    and sends per topic, table operations) on lensflow's registry, so /metrics serves both. The prefix is
    ``faust_`` for every group (not the app id), so dashboards and alerts need no per-group names."""
    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(metrics.registry, "faust"))


def _open_stores(app: faust.App, ctx: Context) -> None:


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
    """/metrics, /healthz, /readyz: all a stream worker serves (the read service is ``lensflow api``). They run in Faust's web thread (web_in_thread=True),
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
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost (or 0.0.0.0-like "any" names): not loopback
        return False
