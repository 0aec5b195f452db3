"""The read service's pure parts, without Kafka, Cassandra or Qdrant: tokens (HS256 and a JWKS),
per-user limits, upload checks, the JSON errors and statuses of the HTTP surface over stand-in stores,
a frozen store answered 503 while the service still answers its probes, cursors, and the CLI's client.
The service on the real stack: tests/integration/test_api.py."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import struct
import threading
import time
import zlib
from collections import namedtuple
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from lensflow.api import auth
from lensflow.api.app import ApiError, UserLimits, create_app
from lensflow.api.events import BadPosition, format_position, parse_position
from lensflow.api.service import ImageRejected, ReadService, open_checked
from lensflow.cli.core import CliError
from lensflow.streams.search import Query, SearchError, SearchService
from lensflow.streams.settings import Settings


def settings(tmp_path, **kw) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **kw)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` and whose pixel data is one compressed row: decoding
    it would fail, opening it (header only) does not."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * width)))
            + chunk(b"IEND", b""))


def jpeg(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, "JPEG")
    return buf.getvalue()


# -- tokens ------------------------------------------------------------------------------------------

def test_a_token_names_its_user_and_scopes(tmp_path):
    s = settings(tmp_path)
    verifier = auth.Verifier(s)
    who = verifier.verify(f"Bearer {auth.issue(s, 'alice', 60)}")
    assert who == auth.Principal("alice", frozenset()) and not who.admin
    assert verifier.verify(f"bearer  {auth.issue(s, 'root', 60, ['admin'])} ").admin


def test_the_local_secret_is_made_once_and_private(tmp_path):
    s = settings(tmp_path)
    first = auth.local_secret(s)
    assert auth.local_secret(s) == first and len(first) >= 48
    assert stat.S_IMODE(os.stat(auth.secret_file(s)).st_mode) == 0o600
    configured = settings(tmp_path, api_jwt_secret=SecretStr("x" * 40))
    assert auth.hs256_secret(configured) == "x" * 40 and not auth.uses_local_secret(configured)


@pytest.mark.parametrize("case", ["missing", "not bearer", "garbage", "expired", "tampered", "other secret", "alg none",
                                  "no exp", "bad subject"])
def test_bad_tokens_are_401(tmp_path, case):
    s = settings(tmp_path)
    secret = auth.hs256_secret(s)
    now = int(time.time())
    good = auth.issue(s, "alice", 60)
    head, body, sig = good.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"sub": "bob", "exp": now + 60}).encode()).decode().rstrip("=")
    header = {
        "missing": None, "not bearer": f"Basic {good}", "garbage": "Bearer not.a.jwt",
        "expired": "Bearer " + jwt.encode({"sub": "alice", "exp": now - 120}, secret, algorithm="HS256"),
        "tampered": f"Bearer {head}.{forged}.{sig}",
        "other secret": "Bearer " + jwt.encode({"sub": "alice", "exp": now + 60}, "y" * 40, algorithm="HS256"),
        "alg none": "Bearer " + jwt.encode({"sub": "alice", "exp": now + 60}, None, algorithm="none"),
        "no exp": "Bearer " + jwt.encode({"sub": "alice"}, secret, algorithm="HS256"),
        "bad subject": "Bearer " + jwt.encode({"sub": "../bob", "exp": now + 60}, secret, algorithm="HS256"),
    }[case]
    with pytest.raises(auth.AuthError) as exc:
        auth.Verifier(s).verify(header)
    assert exc.value.status == 401 and secret not in str(exc.value)
    if case == "expired":
        assert "expired" in str(exc.value)


def test_the_audience_and_issuer_are_checked_when_set(tmp_path):
    s = settings(tmp_path, api_audience="lensflow", api_issuer="https://id.example")
    token = auth.issue(s, "alice", 60)
    assert auth.Verifier(s).verify(f"Bearer {token}").user == "alice"
    other = settings(tmp_path, api_audience="someone-else", api_issuer="https://id.example")
    with pytest.raises(auth.AuthError):
        auth.Verifier(other).verify(f"Bearer {token}")


def test_tokens_of_an_oidc_issuer_are_checked_against_its_jwks(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s = settings(tmp_path, api_jwks_url=f"http://127.0.0.1:{server.server_port}/jwks", api_audience="lensflow")
        now = int(time.time())
        claims = {"sub": "alice", "aud": "lensflow", "exp": now + 60, "scope": "openid admin"}
        verifier = auth.Verifier(s)
        assert verifier.blocking
        who = verifier.verify("Bearer " + jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"}))
        assert who.user == "alice" and who.admin
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with pytest.raises(auth.AuthError):
            verifier.verify("Bearer " + jwt.encode(claims, other, algorithm="RS256", headers={"kid": "k1"}))
        # an HS256 token signed with the public key as a secret (algorithm confusion) is refused
        with pytest.raises(auth.AuthError):
            verifier.verify("Bearer " + jwt.encode(claims, "k" * 40, algorithm="HS256", headers={"kid": "k1"}))
        with pytest.raises(auth.AuthError, match="issuer"):  # nothing to sign with locally
            auth.issue(s, "alice", 60)
    finally:
        server.shutdown()


def test_lifetimes_are_parsed_and_bounded():
    assert [auth.parse_ttl(x) for x in ("90", "90s", "15m", "1h", "7d")] == [90, 90, 900, 3600, 604800]
    for bad in ("", "0", "-1h", "1y", "forever", "400d"):
        with pytest.raises(ValueError):
            auth.parse_ttl(bad)


# -- per-user limits --------------------------------------------------------------------------------

def test_a_user_over_the_rate_gets_429_with_retry_after_and_others_do_not():
    limits = UserLimits(concurrency=2, rate=5.0, streams=1)
    for _ in range(10):  # the burst: twice the rate
        limits.take("alice")
    with pytest.raises(ApiError) as exc:
        limits.take("alice")
    assert exc.value.status == 429 and int(exc.value.headers["Retry-After"]) >= 1
    limits.take("bob")
    time.sleep(0.25)  # a token comes back every 1/rate s
    limits.take("alice")


def test_a_user_over_the_concurrency_gets_429_until_one_ends():
    limits = UserLimits(concurrency=2, rate=100.0, streams=1)
    limits.enter("alice", limits.in_flight, 2, "requests in flight")
    limits.enter("alice", limits.in_flight, 2, "requests in flight")
    with pytest.raises(ApiError) as exc:
        limits.enter("alice", limits.in_flight, 2, "requests in flight")
    assert exc.value.status == 429 and "LENSFLOW_API_USER_CONCURRENCY" in str(exc.value)
    limits.enter("bob", limits.in_flight, 2, "requests in flight")
    limits.leave("alice", limits.in_flight)
    limits.enter("alice", limits.in_flight, 2, "requests in flight")


# -- uploads are checked before anything decodes them -----------------------------------------------

def test_open_checked_refuses_too_many_bytes_garbage_and_pixels_from_the_header():
    with pytest.raises(ImageRejected) as exc:
        open_checked(b"x" * 1001, max_bytes=1000, max_pixels=10**8)
    assert exc.value.status == 413 and "LENSFLOW_MAX_BYTES" in str(exc.value)
    with pytest.raises(ImageRejected) as exc:
        open_checked(b"not an image at all", max_bytes=10**6, max_pixels=10**8)
    assert exc.value.status == 415 and "not a readable image" in str(exc.value)
    with pytest.raises(ImageRejected) as exc:  # no pixel data: the check needs no decode
        open_checked(png_header(3000, 2000), max_bytes=10**6, max_pixels=5_999_999)
    assert exc.value.status == 400 and "3000x2000" in str(exc.value)
    assert open_checked(png_header(3000, 2000), max_bytes=10**6, max_pixels=6_000_000).size == (3000, 2000)
    with pytest.raises(ImageRejected) as exc:  # past Pillow's own cap: DecompressionBombError in open()
        open_checked(png_header(60000, 60000), max_bytes=10**6, max_pixels=100_000_000)
    assert exc.value.status == 400
    with pytest.raises(ImageRejected) as exc:
        open_checked(jpeg(), max_bytes=10**6, max_pixels=10**8, formats=["PNG"])
    assert exc.value.status == 415 and "JPEG" in str(exc.value)


# -- the HTTP surface over stand-in stores ------------------------------------------------------------

class Stores:
    """Stand-ins for the stores (unit tests only: the real ones are in tests/integration)."""

    def __init__(self, cassandra=None, qdrant=None, ready=True):
        self.cassandra, self.qdrant, self._ready, self.error = cassandra, qdrant, ready, None

    def ready(self):
        return self._ready

    def close(self):
        pass


@pytest.fixture()
def client(tmp_path):
    s = settings(tmp_path, max_bytes=100_000, decode_memory_mb=64, api_user_rate=1000.0)
    service = ReadService(s, Stores())
    with TestClient(create_app(s, service), base_url="http://127.0.0.1:8080") as c:
        c.headers["Authorization"] = f"Bearer {auth.issue(s, 'alice', 60)}"
        yield c, s, service


@pytest.mark.parametrize("params,parameter", [
    ({"tag": "x", "near": "1,2,inf"}, "near"), ({"tag": "x", "near": "1,2"}, "near"), ({"tag": "x", "limit": "ten"}, "limit"),
    ({"tag": "x", "limit": "0"}, "limit"), ({"tag": "x", "taken_afer": "2020-01-01"}, "taken_afer"),
    ({"tag": "x", "user": "bob"}, "user"), ({"tag": "x", "taken_after": "yesterday"}, "taken_after"),
    ({"tag": "x", "cursor": "bm90IGEgY3Vyc29y"}, "cursor"), ({"tag": "x", "safe": "maybe"}, "safe")])
def test_a_bad_search_parameter_is_400_naming_it(client, params, parameter):
    c, *_ = client
    r = c.get("/v1/search", params=params)
    assert r.status_code == 400 and r.json()["parameter"] == parameter and r.json()["error"], (params, r.text)


def test_uploads_over_the_limit_not_images_or_empty_are_refused_before_storage(client):
    c, s, _ = client
    r = c.post("/v1/images", content=b"\0" * (s.max_bytes + 1), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and "LENSFLOW_MAX_BYTES" in r.json()["error"]
    r = c.post("/v1/images", files={"file": ("x.jpg", b"\0" * (s.max_bytes + 70_000))})
    assert r.status_code == 413
    r = c.post("/v1/images", content=b"just some text", headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 415 and "not a readable image" in r.json()["error"]
    r = c.post("/v1/images", content=png_header(20000, 20000), headers={"Content-Type": "image/png"})
    assert r.status_code == 400 and "LENSFLOW_MAX_PIXELS" in r.json()["error"]
    r = c.post("/v1/images", content=b"")
    assert r.status_code == 400
    r = c.post("/v1/images", files={"photo": ("x.jpg", jpeg())})
    assert r.status_code == 400 and r.json()["parameter"] == "file"
    assert not (s.data_path / "storage").exists()  # nothing was written


def test_an_enrolment_photo_over_the_decode_budget_is_413_from_its_header(client):
    """25 MP in a small PNG: within LENSFLOW_MAX_PIXELS, but its decode needs more than the 64 MiB decode
    budget: refused from its header, never decoded (and no face model is loaded for it)."""
    c, *_ = client
    buf = io.BytesIO()
    Image.new("RGB", (5000, 5000), (120, 130, 140)).save(buf, "PNG")
    r = c.post("/v1/faces/enroll", data={"name": "n"}, files=[("photos", ("big.png", buf.getvalue()))])
    assert r.status_code == 413 and "LENSFLOW_DECODE_MEMORY_MB" in r.json()["error"], r.text
    assert r.json()["error"].startswith("photo 1: ")
    r = c.post("/v1/faces/enroll", data={"name": " "}, files=[("photos", ("a.jpg", jpeg()))])
    assert r.status_code == 400 and r.json()["parameter"] == "name"
    r = c.post("/v1/faces/enroll", json={"name": "n"})
    assert r.status_code == 415


def test_the_stores_not_open_yet_is_503_and_not_ready(tmp_path):
    s = settings(tmp_path)
    with TestClient(create_app(s, ReadService(s, Stores(ready=False)))) as c:
        r = c.get("/v1/images", headers={"Authorization": f"Bearer {auth.issue(s, 'alice', 60)}"})
        assert r.status_code == 503 and r.headers["Retry-After"] and r.json()["error"]
        assert c.get("/readyz").status_code == 503 and c.get("/healthz").status_code == 200


def test_security_headers_and_metrics(client):
    c, *_ = client
    r = c.get("/v1/people", headers={"Authorization": ""})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert "default-src 'self'" in r.headers["Content-Security-Policy"] and r.headers["X-Frame-Options"] == "DENY"
    text = c.get("/metrics").text
    assert 'lensflow_api_requests_total{method="GET",route="/v1/people",status="401"}' in text


def test_a_frozen_store_answers_503_in_bounded_time_and_never_stalls_the_service(tmp_path, monkeypatch):
    """Every search waits on a frozen Cassandra: they answer 503 (JSON, Retry-After) once the store deadline
    has passed, more of them than there are store threads, while /healthz answers at once: the store calls
    run off the service's event loop (on a real uvicorn, on its own thread, as in a worker)."""
    from concurrent.futures import ThreadPoolExecutor

    import lensflow.api.service as service_module
    from lensflow.api.server import InWorker

    release = threading.Event()

    class Frozen:
        def images_tagged(self, user_id, tag):
            release.wait(8)
            return []

        def rows(self, image_ids):
            release.wait(8)
            return {}

    class Ctx:
        stores = type("S", (), {"ready": threading.Event(), "cassandra": Frozen(), "qdrant": object()})()
        settings = None

    Ctx.stores.ready.set()
    monkeypatch.setattr(service_module, "STORE_TIMEOUT_S", 1.0)
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    s = settings(tmp_path, api_port=port, api_user_rate=1000.0, api_user_concurrency=50)
    Ctx.settings = s
    served = InWorker(s, Ctx)
    served.start()
    base, token = f"http://127.0.0.1:{port}", auth.issue(s, "alice", 60)

    def search(i):
        t0 = time.monotonic()
        r = httpx.get(f"{base}/v1/search", params={"tag": f"t{i}"}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        return r, time.monotonic() - t0

    probes = []
    try:
        with ThreadPoolExecutor(8) as pool:
            searches = [pool.submit(search, i) for i in range(8)]
            time.sleep(0.2)
            while not all(f.done() for f in searches):
                t0 = time.monotonic()
                r = httpx.get(f"{base}/healthz", timeout=1.0)  # ReadTimeout if the loop is stuck
                probes.append((r.status_code, time.monotonic() - t0))
                time.sleep(0.1)
            answers = [f.result() for f in searches]
    finally:
        release.set()
        served.stop()
    for r, took in answers:
        assert r.status_code == 503 and "Cassandra" in r.json()["error"], (r.status_code, r.text[:300])
        assert r.headers.get("Retry-After") and took < 5.0, took  # the frozen call holds 8 s
    # a stalled loop would hold every probe until the searches gave up (1 s); on 2 busy cores one probe
    # may still be slow, so the median is what is asserted
    took = sorted(t for _, t in probes)
    assert len(took) >= 3 and took[len(took) // 2] < 0.5 and all(status == 200 for status, _ in probes), probes


# -- cursors -----------------------------------------------------------------------------------------

def test_a_cursor_is_bound_to_its_query_not_its_page_size():
    q = Query.parse({"user": "u", "tag": "dog", "limit": "5"})
    cursor = q.make_cursor({"t": "2020-01-01T00:00:00", "i": "img1"})
    assert Query.parse({"user": "u", "tag": "dog", "limit": "9", "cursor": cursor}).position() == {
        "t": "2020-01-01T00:00:00", "i": "img1"}
    for other in ({"user": "v", "tag": "dog"}, {"user": "u", "tag": "cat"}, {"user": "u", "tag": "dog", "safe": "true"}):
        with pytest.raises(SearchError, match="cursor"):
            Query.parse({**other, "cursor": cursor})
    with pytest.raises(SearchError, match="cursor"):
        Query.parse({"user": "u", "tag": "dog", "cursor": "%%%"})


def test_tag_pages_follow_the_keyset_with_no_repeat_and_no_gap():
    Row = namedtuple("Row", "image_id kind score taken_at")
    Stored = namedtuple("Stored", "image_id user_id caption uri gps_lat gps_lon taken_at nsfw_score")
    t0 = datetime(2020, 1, 1)
    rows = [Row(f"img{i:03d}", "object", 0.9, t0 + timedelta(hours=i // 4) if i % 10 else None) for i in range(103)]

    class Cassandra:
        def images_tagged(self, user, tag):
            return iter(rows)

        def rows(self, ids):
            return {i: Stored(i, "u", None, None, None, None, None, None) for i in ids}

    service = SearchService(Stores(cassandra=Cassandra()), type("S", (), {"safety_threshold": 0.5})())
    seen, cursor = [], None
    for _ in range(30):
        page = service.page(Query.parse({"user": "u", "tag": "dog", "limit": "10", **({"cursor": cursor} if cursor else {})}))
        seen += [h["image_id"] for h in page.results]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 103
    keys = [((r.taken_at.isoformat() if r.taken_at else ""), r.image_id) for r in rows]
    assert seen == [i for _, i in sorted(keys, reverse=True)]


def test_text_pages_cut_one_fused_ranking():
    Point = namedtuple("Point", "payload score")
    Stored = namedtuple("Stored", "image_id user_id caption uri gps_lat gps_lon taken_at nsfw_score")
    points = [Point({"image_id": f"img{i:03d}", "keywords": "red bike" if i % 3 else "blue car"}, 1.0 - i / 1000)
              for i in range(120)]

    class Qdrant:
        def nearest(self, name, vector, flt, limit, offset=0):
            return points[offset:offset + limit]

        def keyword_matches(self, words, flt, limit):
            return points[:limit]

    class Cassandra:
        def rows(self, ids):
            return {i: Stored(i, "u", None, None, None, None, None, None) for i in ids}

    service = SearchService(Stores(cassandra=Cassandra(), qdrant=Qdrant()), type("S", (), {"safety_threshold": 0.5})())
    seen, cursor = [], None
    while True:
        page = service.page(Query.parse({"user": "u", "text": "red bike", "limit": "25", **({"cursor": cursor} if cursor else {})}),
                            text_vector=[0.0])
        seen += [h["image_id"] for h in page.results]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 120
    whole = service.page(Query.parse({"user": "u", "text": "red bike", "limit": "100"}), text_vector=[0.0]).results
    assert seen[:100] == [h["image_id"] for h in whole]


# -- event positions ---------------------------------------------------------------------------------

def test_event_positions_round_trip_and_bad_ones_are_refused():
    assert parse_position(format_position({2: 7, 0: 15, 1: 0})) == {0: 15, 1: 0, 2: 7}
    assert format_position({2: 7, 0: 15}) == "0-15.2-7" and parse_position(None) == {} and parse_position(" ") == {}
    for bad in ("x", "0-1.x", "0:1", "-1-3", "1-2-3"):
        with pytest.raises(BadPosition):
            parse_position(bad)


# -- the CLI's client ----------------------------------------------------------------------------------

def fake_service(monkeypatch, status: int, body, headers=None):
    sent = {}

    def request(method, url, **kwargs):
        sent.update(url=url, **(kwargs.get("headers") or {}))
        if isinstance(body, Exception):
            raise body
        kw = {"json": body} if not isinstance(body, str) else {"text": body}
        return httpx.Response(status, headers=headers, request=httpx.Request(method, url), **kw)

    monkeypatch.setattr(httpx, "request", request)
    return sent


def test_the_cli_mints_a_token_for_the_user_and_sends_it(monkeypatch, tmp_path):
    from lensflow.cli.client import api_call as _api_call

    s = settings(tmp_path, api_port=8181)
    sent = fake_service(monkeypatch, 200, {"results": []})
    assert _api_call(s, "GET", "/v1/search", "alice") == {"results": []}
    assert sent["url"] == "http://127.0.0.1:8181/v1/search"
    assert auth.Verifier(s).verify(sent["Authorization"]).user == "alice"
    with pytest.raises(CliError, match="--user is required"):
        _api_call(s, "GET", "/v1/search", None)


def test_the_cli_uses_lensflow_api_token_and_refuses_another_users(monkeypatch, tmp_path):
    from lensflow.cli.client import api_call as _api_call

    s0 = settings(tmp_path)
    token = auth.issue(s0, "bob", 60)
    s = settings(tmp_path, api_token=SecretStr(f"{token}\n"))
    sent = fake_service(monkeypatch, 200, {"people": []})
    _api_call(s, "GET", "/v1/people", None)
    assert sent["Authorization"] == f"Bearer {token}"
    with pytest.raises(CliError) as exc:
        _api_call(s, "GET", "/v1/people", "alice")
    assert "bob" in str(exc.value) and token not in str(exc.value)


def test_the_cli_turns_failures_into_one_line(monkeypatch, tmp_path):
    from lensflow.cli.client import api_call as _api_call

    s = settings(tmp_path)
    fake_service(monkeypatch, 503, {"error": "Cassandra did not answer within 10 s"}, {"Retry-After": "5"})
    with pytest.raises(CliError) as exc:
        _api_call(s, "GET", "/v1/search", "alice")
    assert "Cassandra did not answer within 10 s" in str(exc.value) and "try again in 5 s" in str(exc.value)
    fake_service(monkeypatch, 500, "500 Internal Server Error")
    with pytest.raises(CliError, match="HTTP 500"):
        _api_call(s, "GET", "/v1/search", "alice")
    fake_service(monkeypatch, 0, httpx.ConnectError("refused"))
    with pytest.raises(CliError, match="no read service answers"):
        _api_call(s, "GET", "/v1/search", "alice")
    fake_service(monkeypatch, 404, {"error": "image x not found\nsecond line"})
    with pytest.raises(CliError) as exc:
        _api_call(s, "GET", "/v1/images/x", "alice")
    assert str(exc.value) == "image x not found"
