"""Metrics (Prometheus) and logs (structlog, JSON by default), shared by every stage.

Metrics, served on every worker at ``/metrics``:
* ``lensflow_stage_seconds{stage}`` — processing time per image per stage (histogram)
* ``lensflow_images_total{stage,status}`` — images by stage and outcome
* ``lensflow_stage_cpu_seconds_total{stage}`` — CPU time of each stage's own work, measured in the
  thread that does it (a pixel agent's inference and pre/post-processing, labelled by agent: ``visual``
  serves scene and embedding; preprocess's fetch, decode, resize, encode and store; describe's
  captioning and text embedding). Divided by ``lensflow_images_total`` it is a stage's CPU per image.
* ``lensflow_batch_seconds{stage}`` / ``lensflow_batch_size{stage}`` — per-batch wall time and size
  (Faust's own events_runtime stays 0 for take() agents, so batches are timed here)
* ``lensflow_end_to_end_seconds{status}`` — upload → analyzed latency, observed by the join
* ``lensflow_deadletters_total{stage,code}``, ``lensflow_join_inflight`` — dead letters, open images
* ``lensflow_delivery_failures_total{stage}`` — produced records the broker did not acknowledge (the
  runner produces the batch's outputs again; nothing is acked before they are delivered)
* ``lensflow_join_orphans_total`` — stage results the join could attach to no image
* ``lensflow_store_retries_total{store}`` — Cassandra/Qdrant calls retried after a transient fault
* ``lensflow_decoded_cache_total{result}`` — derivatives a pixel agent found decoded (hit) or decoded (miss),
  and decoded ones dropped before every agent had read them (evicted)
* ``lensflow_decoded_cache_wait_seconds_total{stage}`` — time a pixel agent waited for slower ones to
  catch up (how the cache keeps the agents of a worker in step; not counted in stage times)
* ``process_*`` — CPU seconds and resident memory of the worker (prometheus-client's collector)
"""

from __future__ import annotations

import logging
import logging.config
import sys
import time
from contextlib import contextmanager

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.parser import text_string_to_metric_families

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class StageMetrics:
    def __init__(self, metrics: "Metrics", stage: str):
        self._seconds = metrics.stage_seconds.labels(stage)
        self._images = metrics.images_total
        self.stage = stage

    def observe(self, seconds: float, status: str) -> None:
        self._seconds.observe(seconds)
        self._images.labels(self.stage, status).inc()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.stage_seconds = Histogram("lensflow_stage_seconds", "Processing time per image per stage", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.images_total = Counter("lensflow_images_total", "Images by stage and outcome", ["stage", "status"], registry=r)
        self.stage_cpu = Counter("lensflow_stage_cpu_seconds", "CPU time of a stage's own work, in its thread", ["stage"],
                                 registry=r)
        self.batch_seconds = Histogram("lensflow_batch_seconds", "Wall time per agent batch", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("lensflow_batch_size", "Records per agent batch", ["stage"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        # up to an hour: under a backlog an image waits minutes (a 264-image burst on 2 cores: p95 123 s),
        # and with 120 s as the last bucket every such image read as 120 s
        self.end_to_end = Histogram("lensflow_end_to_end_seconds", "Upload to analyzed latency", ["status"],
                                    buckets=LATENCY_BUCKETS + (300, 600, 1800, 3600), registry=r)
        self.deadletters = Counter("lensflow_deadletters_total", "Records dead-lettered", ["stage", "code"], registry=r)
        self.inflight = Gauge("lensflow_join_inflight", "Images waiting in the join (this worker)", registry=r)
        self.decoded_wait = Counter("lensflow_decoded_cache_wait_seconds", "Time a pixel agent waited for slower agents "
                                    "to release decoded derivatives (keeps the agents in step)", ["stage"], registry=r)
        self.decoded = Counter("lensflow_decoded_cache_total", "Derivative decodes shared (hit) or done (miss) by the pixel agents",
                               ["result"], registry=r)
        self.delivery_failures = Counter("lensflow_delivery_failures", "Produced records the broker "
                                         "did not acknowledge (the batch is produced again, never acked before)", ["stage"], registry=r)
        self.join_orphans = Counter("lensflow_join_orphans", "Stage results the join could not attach to any image "
                                    "(no images.prepared and no stored image)", registry=r)
        self.store_retries = Counter("lensflow_store_retries", "Store calls retried after a transient fault", ["store"], registry=r)
        self.sink_seconds = Histogram("lensflow_sink_seconds", "Store write time per join batch", ["store"],
                                      buckets=LATENCY_BUCKETS, registry=r)

    def stage(self, name: str) -> StageMetrics:
        return StageMetrics(self, name)

    def cpu_timed(self, stage: str, fn, *args):
        """``fn(*args)`` in the calling thread, its CPU time counted as ``stage``'s
        (``lensflow_stage_cpu_seconds_total``); run it in the thread that does the stage's work."""
        c0 = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.stage_cpu.labels(stage).inc(time.thread_time() - c0)

    @contextmanager
    def batch(self, stage: str, size: int):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.batch_seconds.labels(stage).observe(time.perf_counter() - t0)
            self.batch_size.labels(stage).observe(size)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def counter_values(exposition: str, name: str) -> dict[str, float]:
    """Values of the one-label counter ``name`` (without ``_total``) in a /metrics text, by label value:
    what the benchmarks and tests read back from a running worker."""

    return {next(iter(sample.labels.values())): sample.value
            for family in text_string_to_metric_families(exposition) if family.name == name
            for sample in family.samples if sample.name == f"{name}_total"}


def configure_logging(level: str = "info", json_logs: bool = True) -> dict:
    """Configure structlog and stdlib logging alike; returns a logging dictConfig for Faust's worker."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=shared + [structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"lensflow": {"()": structlog.stdlib.ProcessorFormatter, "processors": [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info, renderer],
            "foreign_pre_chain": shared}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "lensflow", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": lvl},
        "loggers": {"aiokafka": {"level": max(lvl, logging.WARNING)}, "kafka": {"level": max(lvl, logging.WARNING)},
                    "cassandra": {"level": max(lvl, logging.WARNING)}, "faust": {"level": max(lvl, logging.INFO)},
                    "mode": {"level": max(lvl, logging.INFO)}, "httpx": {"level": logging.WARNING}},
    }
    logging.config.dictConfig(config)
    return config

