"""The stream worker's HTTP side without a broker: liveness and readiness, the web port check, and the
Kafka settings the worker is built with (idempotent producer, topic configs). The read service's HTTP
side is tests/unit/test_api.py.

``TestServer`` starts Faust's own web service (aiohttp, in its thread, as in a worker) from a real
``build()`` with the join stage; no Kafka, Cassandra or Qdrant is contacted (the stores are never opened).
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from pydantic import SecretStr

from lensflow.streams import app as app_module
from lensflow.streams.app import build, is_loopback, liveness
from lensflow.cli.core import CliError
from lensflow.cli.supervise import check_web_port
from lensflow.streams.kafka import topic_config
from lensflow.streams.settings import Settings

TOKEN = "s3cret-token-for-tests"


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# liveness
# ---------------------------------------------------------------------------------------------

def test_liveness_is_ok_until_the_beat_is_older_than_the_threshold():
    assert liveness(100.0, 100.4, 10.0) == (True, pytest.approx(0.4))
    assert liveness(100.0, 110.0, 10.0) == (True, pytest.approx(10.0))
    ok, lag = liveness(100.0, 112.5, 10.0)
    assert not ok and lag == pytest.approx(12.5)


def test_liveness_without_any_beat_is_not_alive():
    assert liveness(None, 5.0, 10.0) == (False, None)


def test_liveness_default_threshold_is_the_module_constant():
    assert app_module.LIVENESS_THRESHOLD_S == 10.0
    assert liveness(0.0, 9.9)[0] and not liveness(0.0, 10.1)[0]


# ---------------------------------------------------------------------------------------------
# loopback addresses
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "worker.example.org", ""])
def test_non_loopback_hosts(host):
    assert not is_loopback(host)


# ---------------------------------------------------------------------------------------------
# Kafka settings of the worker
# ---------------------------------------------------------------------------------------------

def test_topic_config_has_min_insync_replicas_and_retention():
    s = settings(replication_factor=3, min_insync_replicas=2)
    assert topic_config(s, 86_400_000) == {"min.insync.replicas": "2", "retention.ms": "86400000"}
    assert topic_config(s) == {"min.insync.replicas": "2"}
    assert topic_config(settings()) == {"min.insync.replicas": "1"}


def test_topic_config_refuses_more_insync_replicas_than_replicas():
    with pytest.raises(ValueError, match="LENSFLOW_MIN_INSYNC_REPLICAS"):
        topic_config(settings(replication_factor=1, min_insync_replicas=2))


def test_ensure_topics_creates_topics_with_that_config(monkeypatch):
    from lensflow.streams import kafka
    from lensflow.streams.topology import TOPICS

    created = []

    class FakeAdmin:
        def list_topics(self, timeout):
            return type("Meta", (), {"topics": {}})()

        def create_topics(self, topics, request_timeout):
            created.extend(topics)
            return {}

    monkeypatch.setattr(kafka, "admin", lambda s: FakeAdmin())
    kafka.ensure_topics(settings(replication_factor=3, min_insync_replicas=2))
    assert len(created) == len(TOPICS)
    for spec, topic in zip(TOPICS.values(), created):
        assert topic.config == {"min.insync.replicas": "2", "retention.ms": str(spec.retention_ms)}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    s = settings(data_dir=tmp_path_factory.mktemp("web"), web_port=free_port(), max_bytes=5_000_000,
                 api_token=SecretStr(TOKEN), replication_factor=2, min_insync_replicas=2, decode_memory_mb=64)
    app, ctx = build(s, ["join"])
    return s, app, ctx


def test_the_worker_producer_is_idempotent_with_acks_all(built):
    _, app, _ = built

    async def made():  # the worker's producer, as app.producer makes it (not touching app.loop here)
        return app.transport.create_producer()._new_producer()

    producer = asyncio.run(made())
    assert producer._txn_manager is not None  # aiokafka makes one only for an idempotent producer
    assert producer._sender._acks == -1


def test_the_changelog_topics_get_min_insync_replicas(built):
    _, app, _ = built
    tables = list(app.tables.values())
    assert tables  # the join's table
    for table in tables:
        assert table.changelog_topic.config["min.insync.replicas"] == "2"


# ---------------------------------------------------------------------------------------------
# real requests to Faust's web server
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(built):
    """Faust's web service of a built worker, serving in its own thread; the test's event loop plays the
    worker's loop (the heartbeat runs there, and time.sleep() in the test blocks it)."""
    s, app, ctx = built
    loop = asyncio.new_event_loop()
    heartbeat = app._children[0]
    assert type(heartbeat).__name__ == "Heartbeat"
    loop.run_until_complete(app.web.start())
    ctx.stores.ready.set()  # views past the readiness check; the stores themselves are never used
    base = f"http://127.0.0.1:{s.web_port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"{base}/metrics", timeout=2)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield s, app, loop, heartbeat, base
    loop.run_until_complete(app.web.stop())
    if heartbeat.started:
        loop.run_until_complete(heartbeat.stop())
    loop.close()


class TestServer:
    """Requests to Faust's web server of a built worker (the ``server`` fixture)."""

    def test_health_is_503_before_any_heartbeat(self, server):
        *_, heartbeat, base = server
        # the module's server is shared: this test runs first in file order, before any test starts the beat
        assert not heartbeat.started, "run in file order: a test before this one started the heartbeat"
        r = httpx.get(f"{base}/healthz", timeout=5)
        assert r.status_code == 503 and r.json()["ok"] is False and r.json()["loop_lag_s"] is None
        r = httpx.get(f"{base}/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["stale"] is True

    def test_health_follows_the_worker_loop(self, server, monkeypatch):
        s, app, loop, heartbeat, base = server
        loop.run_until_complete(heartbeat.start())
        loop.run_until_complete(asyncio.sleep(0.2))  # the loop runs: the first beat (exec_first)
        r = httpx.get(f"{base}/healthz", timeout=5)
        assert r.status_code == 200 and r.json()["ok"] is True and r.json()["loop_lag_s"] < 1
        ready = httpx.get(f"{base}/readyz", timeout=5).json()
        assert ready["age_s"] < 1 and "stale" not in ready
        assert {"recovered", "rebalancing", "ready"} <= set(ready) and ready["stores"] is True  # a ready_checks key

        monkeypatch.setattr(app_module, "LIVENESS_THRESHOLD_S", 0.5)
        time.sleep(1.0)  # the worker's loop is blocked: nothing beats, the web thread still answers
        r = httpx.get(f"{base}/healthz", timeout=5)
        assert r.status_code == 503 and r.json()["ok"] is False and r.json()["loop_lag_s"] >= 1.0
        r = httpx.get(f"{base}/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["stale"] is True and r.json()["age_s"] >= 1.0
        loop.run_until_complete(asyncio.sleep(1.2))  # the loop runs again: it beats again
        monkeypatch.undo()
        r = httpx.get(f"{base}/healthz", timeout=5)
        assert r.status_code == 200 and r.json()["loop_lag_s"] < 1.5

    def test_ready_checks_are_keys_of_the_snapshot(self, server, built):
        s, app, loop, heartbeat, base = server
        _, _, ctx = built
        ctx.ready_checks.append(("outage", lambda: False))
        ctx.ready_checks.append(("broken", lambda: 1 / 0))
        try:
            if not heartbeat.started:
                loop.run_until_complete(heartbeat.start())
            loop.run_until_complete(asyncio.sleep(1.3))
            r = httpx.get(f"{base}/readyz", timeout=5)
            assert r.status_code == 503
            assert r.json()["outage"] is False and r.json()["broken"] is False and r.json()["ready"] is False
            assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200  # a failing check does not stop beats
        finally:
            del ctx.ready_checks[-2:]

# ---------------------------------------------------------------------------------------------
# the web port
# ---------------------------------------------------------------------------------------------

def test_a_port_in_use_is_one_clear_line():
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CliError) as exc:
            check_web_port("127.0.0.1", port)
    assert str(exc.value) == f"port {port} on 127.0.0.1 is in use (another worker?): set LENSFLOW_WEB_PORT"
    check_web_port("127.0.0.1", port)  # free again


def test_a_free_port_passes_and_leaves_it_free():
    port = free_port()
    check_web_port("127.0.0.1", port)
    check_web_port("localhost", port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_an_unknown_web_host_is_one_clear_line():
    with pytest.raises(CliError, match="LENSFLOW_WEB_HOST"):
        check_web_port("no-such-host.invalid", free_port())


