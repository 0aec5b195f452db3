"""The worker's HTTP side without a broker: liveness, API access, upload limits, the web port check,
and the Kafka settings the worker is built with (idempotent producer, topic configs).

``TestServer`` starts Faust's own web service (aiohttp, in its thread, as in a worker) from a real
``build()`` with the join stage, so the requests go through the request-size limit Faust's aiohttp
Application really has; no Kafka, Cassandra or Qdrant is contacted (the stores are never opened).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import struct
import time
import zlib

import httpx
import pytest
from pydantic import SecretStr

from lensflow.streams import app as app_module
from lensflow.streams.app import (ImageRejected, api_refusal, build, is_loopback, liveness, open_checked,
                                  web_client_max_size)
from lensflow.streams.cli import CliError, check_web_port
from lensflow.streams.kafka import topic_config
from lensflow.streams.settings import Settings

TOKEN = "s3cret-token-for-tests"


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` and whose pixel data is one compressed row: decoding
    it would fail, opening it (header only) does not."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * width)))
            + chunk(b"IEND", b""))


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
# API access
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "worker.example.org", ""])
def test_non_loopback_hosts(host):
    assert not is_loopback(host)


def test_without_token_the_api_answers_on_loopback_only():
    assert api_refusal(settings(web_host="127.0.0.1"), None, host="127.0.0.1:6066") is None
    assert api_refusal(settings(web_host="localhost"), "Bearer whatever", host="localhost:6066") is None
    status, message = api_refusal(settings(web_host="0.0.0.0"), None)
    assert status == 403 and "LENSFLOW_API_TOKEN" in message and "\n" not in message
    assert api_refusal(settings(web_host="0.0.0.0", api_token=SecretStr("")), None)[0] == 403  # empty = unset


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_with_a_token_every_request_needs_it(host):
    s = settings(web_host=host, api_token=SecretStr(TOKEN))
    assert api_refusal(s, f"Bearer {TOKEN}") is None
    assert api_refusal(s, f"bearer  {TOKEN} ") is None
    for header in (None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x", "Bearer wrong", "Bearer é"):
        status, message = api_refusal(s, header)
        assert status == 401 and TOKEN not in message and "\n" not in message


@pytest.mark.parametrize("host", ["127.0.0.1:6066", "127.0.0.1", "localhost:6066", "LOCALHOST", "[::1]:6066", "[::1]"])
def test_without_token_a_request_to_a_loopback_name_passes(host):
    assert api_refusal(settings(web_host="127.0.0.1"), None, host=host) is None
    assert api_refusal(settings(web_host="127.0.0.1"), None, host=host, origin="http://127.0.0.1:6066") is None
    assert api_refusal(settings(web_host="127.0.0.1"), None, host=host, origin="http://localhost:3000") is None


@pytest.mark.parametrize("host", [None, "", "attacker.example:6066", "attacker.example", "127.0.0.1.nip.io:6066",
                                  "localhost.attacker.example", "0.0.0.0:6066", "10.0.0.5", "[::1", "127.0.0.1:6066 x"])
def test_without_token_another_host_name_is_refused(host):
    """DNS rebinding: a page's own name resolved to 127.0.0.1 reaches the worker with the page's Host."""
    status, message = api_refusal(settings(web_host="127.0.0.1"), None, host=host)
    assert status == 403 and "Host" in message and "\n" not in message


@pytest.mark.parametrize("origin", ["https://attacker.example", "null", "http://127.0.0.1.nip.io", "file://", "x"])
def test_without_token_a_page_of_another_origin_is_refused(origin):
    """A web page open on the same machine posts with its own Origin."""
    status, message = api_refusal(settings(web_host="127.0.0.1"), None, host="127.0.0.1:6066", origin=origin)
    assert status == 403 and "Origin" in message and "\n" not in message


def test_with_a_token_host_and_origin_are_not_checked():
    s = settings(web_host="0.0.0.0", api_token=SecretStr(TOKEN))
    assert api_refusal(s, f"Bearer {TOKEN}", host="worker.example.org:6066", origin="https://ui.example.org") is None


def test_a_token_is_read_without_surrounding_whitespace(monkeypatch):
    from lensflow.streams.cli import _worker_call

    monkeypatch.setenv("LENSFLOW_API_TOKEN", f"{TOKEN}\n")  # `echo token > file` and a secret mounted from it
    s = Settings(_env_file=None)
    assert s.api_token.get_secret_value() == TOKEN
    assert api_refusal(s, f"Bearer {TOKEN}") is None
    sent = fake_worker(monkeypatch, 200, {"results": []})
    _worker_call(s, "GET", "/search")
    assert sent == {"Authorization": f"Bearer {TOKEN}"}
    monkeypatch.setenv("LENSFLOW_API_TOKEN", " \n")
    assert Settings(_env_file=None).api_token is None  # blank is unset


# ---------------------------------------------------------------------------------------------
# upload limits
# ---------------------------------------------------------------------------------------------

def test_client_max_size_fits_max_bytes_base64_encoded():
    for max_bytes in (1, 2, 3, 1000, 1_000_001):
        encoded = len(base64.b64encode(b"\0" * max_bytes))
        assert encoded + 64 * 1024 <= web_client_max_size(settings(max_bytes=max_bytes)) <= encoded + 2 * 1024 ** 2
    assert web_client_max_size(settings()) >= 50 * 1024 * 1024 * 4 / 3  # default max_bytes: 50 MiB


def test_open_checked_refuses_too_many_bytes_with_413():
    with pytest.raises(ImageRejected) as exc:
        open_checked(b"x" * 1001, max_bytes=1000, max_pixels=10**8)
    assert exc.value.status == 413 and "LENSFLOW_MAX_BYTES" in str(exc.value)


def test_open_checked_reads_only_the_header_for_the_pixel_limit():
    # 3000 x 2000 says the header; there is no pixel data: a decode would fail, the check does not need one
    with pytest.raises(ImageRejected) as exc:
        open_checked(png_header(3000, 2000), max_bytes=10**6, max_pixels=5_999_999)
    assert exc.value.status == 400 and "3000x2000" in str(exc.value) and "LENSFLOW_MAX_PIXELS" in str(exc.value)
    assert open_checked(png_header(3000, 2000), max_bytes=10**6, max_pixels=6_000_000).size == (3000, 2000)


def test_open_checked_refuses_a_bomb_past_pillows_own_cap_the_same_way():
    # 60000 x 60000: Pillow's open() itself raises DecompressionBombError (unless MAX_IMAGE_PIXELS is None)
    with pytest.raises(ImageRejected) as exc:
        open_checked(png_header(60000, 60000), max_bytes=10**6, max_pixels=100_000_000)
    assert exc.value.status == 400 and "LENSFLOW_MAX_PIXELS" in str(exc.value)


def test_open_checked_accepts_an_image_within_the_limits_and_refuses_garbage():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, "JPEG")
    img = open_checked(buf.getvalue(), max_bytes=10**6, max_pixels=1200)
    assert img.size == (40, 30)
    with pytest.raises(ImageRejected) as exc:
        open_checked(buf.getvalue(), max_bytes=10**6, max_pixels=1199)
    assert exc.value.status == 400
    with pytest.raises(ImageRejected) as exc:
        open_checked(b"not an image at all", max_bytes=10**6, max_pixels=10**8)
    assert exc.value.status == 400 and "not a readable image" in str(exc.value)


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


def test_faust_builds_its_aiohttp_app_with_the_raised_limit(built):
    s, app, _ = built
    assert app.web.web_app._client_max_size == web_client_max_size(s)


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

    def test_api_needs_the_token_and_probes_do_not(self, server):
        *_, base = server
        for path in ("/metrics", "/healthz", "/readyz"):
            assert httpx.get(f"{base}{path}", timeout=5).status_code in (200, 503)
        r = httpx.get(f"{base}/search", params={"user": "u", "text": "a cat"}, timeout=5)
        assert r.status_code == 401 and "error" in r.json() and TOKEN not in r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"
        r = httpx.post(f"{base}/faces/enroll", json={}, headers={"Authorization": "Bearer nope"}, timeout=5)
        assert r.status_code == 401 and TOKEN not in r.text
        r = httpx.post(f"{base}/faces/name", json={}, timeout=5)
        assert r.status_code == 401
        r = httpx.post(f"{base}/faces/name", json={}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert r.status_code == 400  # past the token: the body is checked

    def enroll(self, base, images):
        return httpx.post(f"{base}/faces/enroll", json={"user": "u", "name": "n", "images": images},
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def test_a_photo_over_aiohttps_default_1_mib_is_read(self, server):
        *_, base = server
        photo = os.urandom(3_900_000)  # a 3.9 MB "photo" (not an image: the answer proves the body was read)
        r = self.enroll(base, [base64.b64encode(photo).decode()])
        assert r.status_code == 400 and r.json()["error"] == "image 1: not a readable image (UnidentifiedImageError)"

    def test_an_image_over_max_bytes_is_413_with_a_message(self, server):
        s, *_, base = server
        r = self.enroll(base, [base64.b64encode(b"\0" * (s.max_bytes + 1)).decode()])
        assert r.status_code == 413 and "LENSFLOW_MAX_BYTES" in r.json()["error"]

    def test_a_body_over_the_limit_is_413_json(self, server):
        s, *_, base = server
        r = self.enroll(base, [base64.b64encode(b"\0" * (s.max_bytes // 2)).decode()] * 3)
        assert r.status_code == 413 and "fewer photos" in r.json()["error"]

    def test_a_pixel_bomb_is_refused_from_its_header(self, server):
        *_, base = server
        r = self.enroll(base, [base64.b64encode(png_header(20000, 20000)).decode()])
        assert r.status_code == 400 and "LENSFLOW_MAX_PIXELS" in r.json()["error"]

    def test_an_enrolment_photo_is_decoded_within_the_decode_budget(self, server):
        """25 MP in a ~100 KB PNG: within LENSFLOW_MAX_PIXELS, but its decode needs more than the worker's
        64 MiB decode budget: refused from its header, never decoded."""
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (5000, 5000), (120, 130, 140)).save(buf, "PNG")
        assert len(buf.getvalue()) < 200_000
        r = self.enroll(base := server[-1], [base64.b64encode(buf.getvalue()).decode()])
        assert r.status_code == 413 and "LENSFLOW_DECODE_MEMORY_MB" in r.json()["error"], (r.status_code, r.text[:300])
        assert r.json()["error"].startswith("image 1: ")
        assert httpx.get(f"{base}/metrics", timeout=5).status_code == 200

    def test_bodies_must_be_json_objects_sent_as_json(self, server):
        *_, base = server
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = '{"user": "u", "person_id": "p", "name": "n"}'
        for path in ("/faces/name", "/faces/enroll"):
            # an HTML form or a text/plain fetch() needs no CORS preflight: refused before the body is read
            for kind in ("text/plain", "application/x-www-form-urlencoded", None):
                headers = {**auth, **({"Content-Type": kind} if kind else {})}
                r = httpx.post(f"{base}{path}", content=body, headers=headers, timeout=5)
                assert r.status_code == 415 and "application/json" in r.json()["error"], (path, kind, r.status_code, r.text)
            for bad in ("not json", "[1, 2]", '"text"', "{"):
                r = httpx.post(f"{base}{path}", content=bad, headers={**auth, "Content-Type": "application/json"}, timeout=5)
                assert r.status_code == 400 and "JSON" in r.json()["error"], (path, bad, r.status_code, r.text)
        r = httpx.post(f"{base}/faces/name", json={"user": "u", "person_id": 3, "name": ["n"]}, headers=auth, timeout=5)
        assert r.status_code == 400 and "error" in r.json()

    def test_bad_search_parameters_are_400(self, server):
        *_, base = server
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for params in ({"user": "u", "tag": "x", "near": "1,2,inf"}, {"user": "u", "tag": "x", "near": "1,2"},
                       {"user": "u", "tag": "x", "limit": "ten"}, {"user": "../u", "tag": "x"},
                       {"user": "u", "tag": "x", "taken_afer": "2020-01-01"}):
            r = httpx.get(f"{base}/search", params=params, headers=auth, timeout=5)
            assert r.status_code == 400 and r.json()["error"], (params, r.status_code, r.text)

    def test_a_hung_store_answers_503_and_never_stalls_the_web_thread(self, server, built, monkeypatch):
        """Cassandra frozen: every search waits on it. The searches answer 503 (JSON) once the API's store
        deadline has passed, more of them than the API has store threads too, and /healthz answers at once
        meanwhile: the store calls run off the web thread's event loop."""
        import threading
        from concurrent.futures import ThreadPoolExecutor

        *_, base = server
        _, _, ctx = built
        release = threading.Event()

        class FrozenCassandra:
            def images_tagged(self, user_id, tag):
                release.wait(6)
                return []

            def rows(self, image_ids):
                release.wait(6)
                return {}

        monkeypatch.setattr(ctx.stores, "cassandra", FrozenCassandra())
        monkeypatch.setattr(app_module, "API_STORE_TIMEOUT_S", 1.0, raising=False)
        auth = {"Authorization": f"Bearer {TOKEN}"}

        def search(i):
            t0 = time.monotonic()
            r = httpx.get(f"{base}/search", params={"user": "u", "tag": f"t{i}"}, headers=auth, timeout=30)
            return r, time.monotonic() - t0

        probes = []
        try:
            with ThreadPoolExecutor(8) as pool:
                searches = [pool.submit(search, i) for i in range(8)]
                time.sleep(0.2)
                while not all(f.done() for f in searches):
                    t0 = time.monotonic()
                    r = httpx.get(f"{base}/healthz", timeout=1.0)  # ReadTimeout if the web thread is stuck
                    probes.append((r.status_code, time.monotonic() - t0))
                    time.sleep(0.1)
                answers = [f.result() for f in searches]
        finally:
            release.set()
        for r, took in answers:
            assert r.status_code == 503 and "Cassandra" in r.json()["error"], (r.status_code, r.text[:300])
            assert r.headers.get("Retry-After") and took < 2.5, took
        assert probes and max(took for _, took in probes) < 0.5, probes


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


# ---------------------------------------------------------------------------------------------
# the CLI's side of the API
# ---------------------------------------------------------------------------------------------

def fake_worker(monkeypatch, status: int, body: dict):
    sent = {}

    def request(method, url, **kwargs):
        sent.update(kwargs.get("headers") or {})
        return httpx.Response(status, json=body, request=httpx.Request(method, url))

    monkeypatch.setattr(httpx, "request", request)
    return sent


def test_the_cli_sends_the_token_only_when_set(monkeypatch):
    from lensflow.streams.cli import _worker_call

    sent = fake_worker(monkeypatch, 200, {"results": []})
    assert _worker_call(settings(api_token=SecretStr(TOKEN)), "GET", "/search") == {"results": []}
    assert sent == {"Authorization": f"Bearer {TOKEN}"}
    sent = fake_worker(monkeypatch, 200, {"results": []})
    _worker_call(settings(), "GET", "/search")
    assert "Authorization" not in sent


@pytest.mark.parametrize("token", [None, SecretStr(TOKEN)])
def test_the_cli_turns_401_into_one_line_without_the_token(monkeypatch, token):
    from lensflow.streams.cli import _worker_call

    fake_worker(monkeypatch, 401, {"error": "wrong API token"})
    with pytest.raises(CliError) as exc:
        _worker_call(settings(api_token=token), "GET", "/search")
    message = str(exc.value)
    assert "LENSFLOW_API_TOKEN" in message and TOKEN not in message and "\n" not in message


def test_the_cli_says_a_503_is_worth_trying_again(monkeypatch):
    from lensflow.streams.cli import _worker_call

    fake_worker(monkeypatch, 503, {"error": "Cassandra did not answer within 10 s"})
    with pytest.raises(CliError) as exc:
        _worker_call(settings(), "GET", "/search")
    assert "Cassandra did not answer within 10 s" in str(exc.value) and "try again" in str(exc.value)


def test_the_cli_names_an_answer_without_json_and_a_worker_that_does_not_answer(monkeypatch):
    from lensflow.streams.cli import _worker_call

    def text(method, url, **kwargs):
        return httpx.Response(500, text="500 Internal Server Error", request=httpx.Request(method, url))

    monkeypatch.setattr(httpx, "request", text)
    with pytest.raises(CliError) as exc:
        _worker_call(settings(), "GET", "/search")
    assert "HTTP 500" in str(exc.value) and "worker's log" in str(exc.value)

    def slow(method, url, **kwargs):
        raise httpx.ReadTimeout("timed out", request=httpx.Request(method, url))

    monkeypatch.setattr(httpx, "request", slow)
    with pytest.raises(CliError) as exc:
        _worker_call(settings(), "GET", "/search")
    assert "did not answer within" in str(exc.value) and "start one" not in str(exc.value)


def test_the_cli_shows_the_workers_403_reason(monkeypatch):
    from lensflow.streams.cli import _worker_call

    status, reason = api_refusal(settings(web_host="0.0.0.0"), None)
    fake_worker(monkeypatch, status, {"error": reason})
    with pytest.raises(CliError) as exc:
        _worker_call(settings(), "POST", "/faces/name", json={})
    assert str(exc.value) == reason
