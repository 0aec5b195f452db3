"""Plain Kafka clients (confluent-kafka) for everything outside the Faust worker: topic creation,
the CLI's producer, waiting for results. Producers use ``murmur2_random``, the partitioner of
Faust/aiokafka and the Java client, so a key lands on the same partition whoever produced it —
the join's table depends on it.
"""

from __future__ import annotations

import time
from typing import Iterable

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .security import confluent_conf
from .settings import Settings
from .topology import TOPICS


def kafka_conf(settings: Settings, **extra) -> dict:
    """Base configuration of every confluent-kafka client: bootstrap servers and security."""

    return {"bootstrap.servers": settings.kafka_bootstrap, **confluent_conf(settings), **extra}


def producer(settings: Settings, **extra) -> Producer:
    conf = {**kafka_conf(settings), "partitioner": "murmur2_random",
            "enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "lz4"}
    conf.update(extra)
    return Producer(conf)


def admin(settings: Settings) -> AdminClient:
    return AdminClient(kafka_conf(settings))


def wait_for_kafka(settings: Settings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    client = admin(settings)
    while time.monotonic() < deadline:
        try:
            client.list_topics(timeout=5)
            return
        except KafkaException as exc:
            last = exc
            time.sleep(1)
    raise TimeoutError(f"Kafka at {settings.kafka_bootstrap} did not answer within {timeout_s:.0f}s ({last})")


def topic_config(settings: Settings, retention_ms: int | None = None) -> dict[str, str]:
    """Config of a topic lensflow creates (topology topics, Faust's table changelogs), as Kafka strings:
    ``min.insync.replicas`` (with acks=all producers, a write is acknowledged once on that many
    replicas; fewer in sync and producers get NOT_ENOUGH_REPLICAS rather than a silent single copy)
    and, when given, ``retention.ms``. Raises ValueError when min.insync.replicas exceeds the
    replication factor: every acks=all write to such a topic would fail."""
    if settings.min_insync_replicas > settings.replication_factor:
        raise ValueError(f"min_insync_replicas={settings.min_insync_replicas} is above replication_factor="
                         f"{settings.replication_factor}: every write would fail with NOT_ENOUGH_REPLICAS; "
                         "set LENSFLOW_MIN_INSYNC_REPLICAS at most LENSFLOW_REPLICATION_FACTOR")
    config = {"min.insync.replicas": str(settings.min_insync_replicas)}
    if retention_ms is not None:
        config["retention.ms"] = str(retention_ms)
    return config


def ensure_topics(settings: Settings) -> list[str]:
    """Create every topology topic that is missing; check the partition count of existing joined topics."""
    client = admin(settings)
    existing = client.list_topics(timeout=10).topics
    wanted = []
    for spec in TOPICS.values():
        name = settings.topic(spec.name)
        if name in existing:
            have = len(existing[name].partitions)
            if spec.joined and have != settings.partitions:
                raise RuntimeError(f"topic {name} has {have} partitions but the join needs {settings.partitions} "
                                   "(all topics the join reads must be co-partitioned)")
            continue
        wanted.append(NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication_factor,
                               config=topic_config(settings, spec.retention_ms)))
    created = []
    for name, fut in (client.create_topics(wanted, request_timeout=30).items() if wanted else []):
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created


def end_offsets_consumer(settings: Settings, topics: Iterable[str], group: str = "lensflow-cli") -> Consumer:
    """A consumer assigned to the *current end* of every partition of ``topics``: it sees only what comes next."""
    consumer = Consumer({**kafka_conf(settings), "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "latest"})
    assignment = []
    meta = consumer.list_topics(timeout=10).topics
    for topic in topics:
        name = settings.topic(topic)
        for p in meta[name].partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            assignment.append(TopicPartition(name, p, high))
    consumer.assign(assignment)
    return consumer
