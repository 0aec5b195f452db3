"""The read service on the real stack (Kafka, Cassandra, Qdrant local mode), served by the worker
that owns Qdrant, with per-user JWTs minted from the namespace's local secret:

* round trip: upload by HTTP, the SSE event, the analysis, the photo found by a word printed in it
  and by an enrolled person's name, its derivative and rendering, and an event stream resumed with
  Last-Event-ID after a drop, with nothing missed;
* isolation: for each route, a user sees only their own images, people and events; another user's
  image answers 404; an expired, tampered or missing token answers 401; no admin scope, 403;
* paging: 50 images paged with ``cursor`` (tag search and the image list), no repeat, no gap;
* the OpenAPI document validates and holds every route.
"""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from datetime import datetime, timedelta

import httpx
import jwt
import pytest
from PIL import Image

from tests.conftest import PHOTOS

from .conftest import Namespace

pytestmark = pytest.mark.integration

STAGES = "metadata,text,faces,describe"
TEXT_PAGE = PHOTOS / "printed_page_text.png"
PORTRAIT = PHOTOS / "obama_portrait.jpg"
PODIUM = PHOTOS / "obama_podium.jpg"
CAT = PHOTOS / "cat_chelsea.png"


@pytest.fixture(scope="module")
def ns(stack, models, tmp_path_factory):
    ns = Namespace(stack, tmp_path_factory.mktemp("lensflow-api"), join_timeout_s=4, join_tick_interval_s=1,
                   stages=STAGES)
    ns.cli("init")
    ns.start_worker(timeout=300)
    yield ns
    ns.close()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def tokens(ns) -> dict[str, str]:
    alice, bob = ns.token("alice"), ns.token("bob")
    secret = (ns.data_dir / "api" / "jwt-secret").read_text().strip()
    now = int(time.time())
    expired = jwt.encode({"sub": "alice", "iat": now - 7200, "exp": now - 3600}, secret, algorithm="HS256")
    head, body, sig = alice.split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    forged = jwt.utils.base64url_encode(json.dumps({**claims, "sub": "bob"}).encode()).decode()
    other_key = jwt.encode({"sub": "alice", "exp": now + 3600}, "not-the-secret-" * 3, algorithm="HS256")
    return {"alice": alice, "bob": bob, "admin": ns.token("root", "1h", "admin"), "expired": expired,
            "tampered": f"{head}.{forged}.{sig}", "other_key": other_key}


class Events:
    """A /v1/events client on a thread: every event (id, data) into a queue."""

    def __init__(self, ns, token: str, last_id: str | None = None):
        self.events: queue.Queue = queue.Queue()
        self.ids: list[str] = []
        self.status: int | None = None
        self.ready = threading.Event()
        self._stop = False
        headers = {**bearer(token), **({"Last-Event-ID": last_id} if last_id else {})}
        self.thread = threading.Thread(target=self._run, args=(f"{ns.api}/v1/events", headers), daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "the event stream did not open"

    def _run(self, url: str, headers: dict) -> None:
        with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(10, read=None)) as resp:
            self.status = resp.status_code
            self.ready.set()
            if resp.status_code != 200:
                return
            event: dict = {}
            for line in resp.iter_lines():
                if self._stop:
                    return
                if line.startswith("id: "):
                    event["id"] = line[4:]
                elif line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif line == "" and "data" in event:
                    self.ids.append(event["id"])
                    self.events.put(event)
                    event = {}

    def wait_for(self, image_id: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if event["data"]["image_id"] == image_id:
                return event
        raise AssertionError(f"no analyzed event for {image_id} within {timeout} s")

    def drain(self, seconds: float) -> list[dict]:
        out, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                out.append(self.events.get(timeout=0.2))
            except queue.Empty:
                pass
        return out

    def close(self) -> None:
        self._stop = True


def upload(ns, token: str, path, multipart: bool = False) -> dict:
    data = path.read_bytes()
    if multipart:
        r = httpx.post(f"{ns.api}/v1/images", headers=bearer(token), files={"file": (path.name, data)}, timeout=60)
    else:
        r = httpx.post(f"{ns.api}/v1/images", headers={**bearer(token), "Content-Type": "application/octet-stream"},
                       content=data, timeout=60)
    assert r.status_code == 202, (r.status_code, r.text)
    body = r.json()
    assert body["url"] == f"/v1/images/{body['image_id']}" and body["status"] == "submitted"
    return body


def get(ns, token: str | None, path: str, **params) -> httpx.Response:
    return httpx.get(f"{ns.api}{path}", headers=bearer(token) if token else {}, params=params, timeout=60)


def ids_of(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return [h["image_id"] for h in resp.json()["results"]]


@pytest.fixture(scope="module")
def alices(ns, tokens) -> dict:
    """Alice's round trip; what it made, for the isolation tests."""
    stream = Events(ns, tokens["alice"])
    assert stream.status == 200
    page = upload(ns, tokens["alice"], TEXT_PAGE)
    again = upload(ns, tokens["alice"], TEXT_PAGE, multipart=True)
    assert again["image_id"] == page["image_id"]  # the same bytes by the same user: one image
    seen = stream.wait_for(page["image_id"])
    assert seen["data"]["status"] == "complete", seen
    enrolled = httpx.post(f"{ns.api}/v1/faces/enroll", headers=bearer(tokens["alice"]), data={"name": "Barack Obama"},
                          files=[("photos", (PORTRAIT.name, PORTRAIT.read_bytes()))], timeout=120)
    assert enrolled.status_code == 200 and enrolled.json()["faces"] == 1, enrolled.text
    podium = upload(ns, tokens["alice"], PODIUM)
    stream.wait_for(podium["image_id"])
    last_id = stream.ids[-1]
    stream.close()
    return {"page": page["image_id"], "podium": podium["image_id"], "person": enrolled.json()["person_id"],
            "last_event_id": last_id}


def test_round_trip_upload_event_analysis_and_search(ns, tokens, alices):
    alice = tokens["alice"]
    doc = get(ns, alice, f"/v1/images/{alices['page']}").json()
    assert doc["status"] == "complete" and doc["user_id"] == "alice"
    assert any("Region-based segmentation" in ln["text"] for ln in doc["analysis"]["text"]["lines"])
    shown = json.loads(ns.cli("show", alices["page"], "--json").stdout)
    assert doc["analysis"] == shown["analysis"]  # the analysis as `show --json` prints it
    # found by a word printed in it, and by a person's name
    assert alices["page"] in ids_of(get(ns, alice, "/v1/search", text="segmentation"))
    assert alices["podium"] in ids_of(get(ns, alice, "/v1/search", person="Barack Obama"))
    podium = get(ns, alice, f"/v1/images/{alices['podium']}").json()
    assert [f["person_name"] for f in podium["analysis"]["faces"]] == ["Barack Obama"]
    people = get(ns, alice, "/v1/people").json()["people"]
    assert any(p["person_id"] == alices["person"] and p["name"] == "Barack Obama" for p in people), people
    # the image itself, and the boxes drawn on it
    for path in ("derivative.jpg", "render.jpg"):
        r = get(ns, alice, f"/v1/images/{alices['page']}/{path}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", (path, r.status_code, r.text[:200])
        assert Image.open(io.BytesIO(r.content)).format == "JPEG"
    # the CLI goes through the service too
    found = json.loads(ns.cli("search", "--user", "alice", "--person", "Barack Obama", "--json").stdout)
    assert alices["podium"] in [h["image_id"] for h in found]


def test_an_event_stream_resumes_with_last_event_id_without_a_gap(ns, tokens, alices):
    """The stream dropped after the podium's event; the cat is analysed meanwhile; a reconnect with the
    last event id gets the cat's event (and nothing already seen)."""
    cat = upload(ns, tokens["alice"], CAT)
    watcher = Events(ns, tokens["alice"])  # a live stream, to know when the cat is done
    watcher.wait_for(cat["image_id"])
    watcher.close()
    resumed = Events(ns, tokens["alice"], last_id=alices["last_event_id"])
    assert resumed.status == 200
    event = resumed.wait_for(cat["image_id"], timeout=30)
    assert event["data"]["caption"] and event["data"]["summary"] is not None
    earlier = [e for e in resumed.drain(2) if e["data"]["image_id"] in (alices["page"], alices["podium"])]
    assert earlier == []
    resumed.close()
    bad = httpx.get(f"{ns.api}/v1/events", headers={**bearer(tokens["alice"]), "Last-Event-ID": "x"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["parameter"] == "Last-Event-ID"


def test_every_route_keeps_users_apart(ns, tokens, alices):
    bob, alice = tokens["bob"], tokens["alice"]
    page, person = alices["page"], alices["person"]
    # another user's image: 404 on every route that names it, never 403
    for path in (f"/v1/images/{page}", f"/v1/images/{page}/derivative.jpg", f"/v1/images/{page}/render.jpg"):
        r = get(ns, bob, path)
        assert r.status_code == 404 and "not found" in r.json()["error"], (path, r.status_code, r.text)
    assert get(ns, bob, "/v1/search", like=page).status_code == 404
    renamed = httpx.put(f"{ns.api}/v1/people/{person}/name", headers=bearer(bob), json={"name": "Mallory"}, timeout=30)
    assert renamed.status_code == 404, renamed.text
    # and nothing of alice's in bob's lists and searches
    assert ids_of(get(ns, bob, "/v1/search", text="segmentation")) == []
    assert ids_of(get(ns, bob, "/v1/search", person="Barack Obama")) == []
    assert ids_of(get(ns, bob, "/v1/images")) == []
    assert get(ns, bob, "/v1/people").json()["people"] == []
    # the user comes from the token, never from a parameter
    r = get(ns, bob, "/v1/search", text="segmentation", user="alice")
    assert r.status_code == 400 and r.json()["parameter"] == "user"
    # events: bob's stream carries none of alice's
    bobs, alices_stream = Events(ns, bob), Events(ns, alice)
    fresh = upload(ns, alice, PHOTOS / "coffee_espresso.png")
    alices_stream.wait_for(fresh["image_id"])
    assert bobs.drain(2) == []
    bobs.close(), alices_stream.close()
    # alice still sees hers
    assert alices["page"] in ids_of(get(ns, alice, "/v1/images", limit=100))
    assert get(ns, alice, f"/v1/images/{page}").status_code == 200


def test_tokens_that_are_missing_expired_or_tampered_answer_401_and_admin_needs_its_scope(ns, tokens, alices):
    page = alices["page"]
    routes = [("GET", f"/v1/images/{page}", {}), ("GET", "/v1/images", {}), ("GET", f"/v1/images/{page}/derivative.jpg", {}),
              ("GET", f"/v1/images/{page}/render.jpg", {}), ("GET", "/v1/search", {"params": {"tag": "x"}}),
              ("GET", "/v1/people", {}), ("GET", "/v1/events", {}),
              ("PUT", f"/v1/people/{alices['person']}/name", {"json": {"name": "x"}}),
              ("POST", "/v1/images", {"content": b"x"}), ("POST", "/v1/faces/enroll", {"files": {"photos": b"x"}}),
              ("GET", f"/v1/admin/images/{page}", {}), ("POST", "/v1/admin/reanalyze", {"json": {"image_ids": [page], "stage": "text"}})]
    for kind in (None, "expired", "tampered", "other_key", "garbage"):
        headers = {} if kind is None else bearer(tokens.get(kind, "not.a.jwt"))
        for method, path, kw in routes:
            r = httpx.request(method, f"{ns.api}{path}", headers=headers, timeout=30, **kw)
            assert r.status_code == 401, (kind, method, path, r.status_code, r.text[:200])
            assert r.headers.get("WWW-Authenticate", "").startswith("Bearer") and r.json()["error"]
    for method, path, kw in routes[-2:]:
        r = httpx.request(method, f"{ns.api}{path}", headers=bearer(tokens["alice"]), timeout=30, **kw)
        assert r.status_code == 403 and "admin" in r.json()["error"], (method, path, r.status_code, r.text)
    admin = get(ns, tokens["admin"], f"/v1/admin/images/{page}")
    assert admin.status_code == 200 and admin.json()["user_id"] == "alice"


def test_the_development_login_refuses_other_hosts_and_origins(ns):
    port = ns.env["LENSFLOW_API_PORT"]
    ok = httpx.post(f"{ns.api}/v1/dev/login", timeout=30)
    assert ok.status_code == 200 and ok.json()["user"] == "demo"
    assert get(ns, ok.json()["token"], "/v1/images").status_code == 200
    rebound = httpx.post(f"{ns.api}/v1/dev/login", headers={"Host": f"attacker.example:{port}"}, timeout=30)
    assert rebound.status_code == 403 and "Host" in rebound.json()["error"]
    page = httpx.post(f"{ns.api}/v1/dev/login", headers={"Origin": "https://attacker.example"}, timeout=30)
    assert page.status_code == 403 and "origin" in page.json()["error"]


def exif_photo(path, taken: datetime, i: int) -> None:
    img = Image.new("RGB", (320, 240), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Pagercam", "P-50"  # Make, Model
    exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
    img.save(path, "JPEG", exif=exif, quality=80)


def test_fifty_images_page_by_cursor_without_repeat_or_gap(ns, tokens, tmp_path):
    start = datetime(2019, 3, 1, 12, 0, 0)
    files = []
    for i in range(50):
        p = tmp_path / f"p{i:02d}.jpg"
        exif_photo(p, start + timedelta(hours=i // 3), i)  # three by three the same time: ties broken by id
        files.append(str(p))
    proc = ns.cli("submit", "--user", "pager", "--wait", "--json", "--stages", "metadata", "--timeout", "300", *files)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 50 and {r["status"] for r in results} == {"complete"}
    wanted = {r["image_id"] for r in results}
    token = ns.token("pager")
    for path, params in (("/v1/search", {"tag": "2019"}), ("/v1/images", {})):
        seen, pages, cursor, keys = [], 0, None, []
        while True:
            r = get(ns, token, path, limit=7, **params, **({"cursor": cursor} if cursor else {}))
            assert r.status_code == 200, r.text
            body = r.json()
            seen += [h["image_id"] for h in body["results"]]
            keys += [(h.get("taken_at") or "", h["image_id"]) for h in body["results"]]
            pages += 1
            cursor = body["next_cursor"]
            if not cursor:
                break
            assert pages < 20, "the cursor never ends"
        assert len(seen) == len(set(seen)) == 50 and set(seen) == wanted, (path, len(seen), len(set(seen)))
        assert pages == 8
        if path == "/v1/search":
            assert keys == sorted(keys, reverse=True)  # newest first, ties by id
    r = get(ns, token, "/v1/search", tag="2019", cursor="bm90IGEgY3Vyc29y")
    assert r.status_code == 400 and r.json()["parameter"] == "cursor"
    first = get(ns, token, "/v1/search", tag="2019", limit=7).json()["next_cursor"]
    r = get(ns, token, "/v1/search", tag="pagercam p-50", cursor=first)  # a cursor pages only its own query
    assert r.status_code == 400 and r.json()["parameter"] == "cursor"


def test_the_openapi_document_validates_and_holds_every_route(ns):
    from openapi_spec_validator import validate

    doc = httpx.get(f"{ns.api}/openapi.json", timeout=30).json()
    validate(doc)
    assert doc["openapi"].startswith("3.")
    expected = {("post", "/v1/images"), ("get", "/v1/images"), ("get", "/v1/images/{image_id}"),
                ("get", "/v1/images/{image_id}/render.jpg"), ("get", "/v1/images/{image_id}/derivative.jpg"),
                ("get", "/v1/search"), ("post", "/v1/faces/enroll"), ("get", "/v1/people"),
                ("put", "/v1/people/{person_id}/name"), ("get", "/v1/events"), ("get", "/v1/admin/images/{image_id}"),
                ("post", "/v1/admin/reanalyze"), ("post", "/v1/dev/login")}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert expected <= documented, expected - documented
    assert {"text", "like", "tag", "person", "taken_after", "near", "safe", "limit", "cursor"} <= {
        p["name"] for p in doc["paths"]["/v1/search"]["get"]["parameters"]}
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


def test_an_admin_runs_a_stage_again_on_any_users_image(ns, tokens, alices):
    page = alices["page"]
    before = get(ns, tokens["admin"], f"/v1/admin/images/{page}").json()["analysis_version"]
    r = httpx.post(f"{ns.api}/v1/admin/reanalyze", headers=bearer(tokens["admin"]),
                   json={"image_ids": [page], "stage": "describe"}, timeout=30)
    assert r.status_code == 400 and r.json()["parameter"] == "stage", r.text  # describe follows a re-submission
    r = httpx.post(f"{ns.api}/v1/admin/reanalyze", headers=bearer(tokens["admin"]),
                   json={"image_ids": [page], "stage": "text"}, timeout=30)
    assert r.status_code == 202, r.text
    (sent,) = r.json()["results"]
    assert sent["status"] == "sent" and sent["run_id"].startswith("reanalyze-api-") and sent["run_id"].endswith(page[:8])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        doc = get(ns, tokens["alice"], f"/v1/images/{page}").json()
        if doc["analysis_version"] > before:
            break
        time.sleep(1)
    assert doc["analysis_version"] == before + 1 and doc["run_id"] == sent["run_id"], doc["run_id"]
    assert any("Region-based segmentation" in ln["text"] for ln in doc["analysis"]["text"]["lines"])
