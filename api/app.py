"""The read service's HTTP surface: FastAPI under uvicorn (docs/api.md).

Why FastAPI: the OpenAPI 3 document is generated from the same typed request and response models
(pydantic, already lensflow's settings library) that validate each request, so the description at
``/openapi.json`` cannot drift from the code; it is async on Starlette, whose ``StreamingResponse``
serves the Server-Sent Events; and it runs under uvicorn, on a process of its own or on a thread of
the worker that owns Qdrant's local mode.

Every ``/v1`` route takes the user from the bearer token (``api/auth.py``), never from a parameter,
and runs its blocking work on the service's bounded pools (``api/service.py``): nothing here blocks
the event loop. Errors are JSON ``{"error", "parameter"?}``: 400 bad parameter, 401 no valid token,
403 a scope missing, 404 missing or another user's, 413/415 a refused upload, 429 over the user's
limits, 503 a store, Kafka or the models down or busy (with Retry-After).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any, Optional

import structlog
from fastapi import Depends, FastAPI, Query as Q, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lensflow.streams.app import is_loopback
from lensflow.streams.errors import is_transient
from lensflow.streams.search import Query, SearchError, SearchNotFound
from lensflow.streams.settings import Settings

from . import auth
from .events import AnalyzedReader, BadPosition, parse_position, stream
from .service import RETRY_AFTER_S, ImageRejected, NotFound, ReadService, Unavailable

log = structlog.get_logger("lensflow.api")

GALLERY = Path(__file__).parent / "gallery"
VERSION = "v1"
#: multipart overhead allowed over LENSFLOW_MAX_BYTES per photo (boundaries, part headers, a name)
MULTIPART_OVERHEAD = 64 * 1024
#: photos one enrolment request may carry
ENROLL_MAX_PHOTOS = 10


# -- metrics (one set per process, whichever app serves them) ------------------------------------------
class _Metrics:
    def __init__(self) -> None:
        self.requests = Counter("lensflow_api_requests", "Read-service requests by route, method and status.",
                                ["route", "method", "status"])
        self.seconds = Histogram("lensflow_api_request_seconds", "Read-service request latency by route.", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.sse = Gauge("lensflow_api_sse_clients", "Open /v1/events streams.")


_metrics: _Metrics | None = None


def metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


# -- errors ----------------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, message: str, parameter: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.parameter, self.headers = status, parameter, headers


def error(status: int, message: str, parameter: str | None = None, headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if parameter:
        body["parameter"] = parameter
    return JSONResponse(body, status_code=status, headers=headers)


def _parameter_of(message: str) -> str | None:
    m = re.match(r"(\w+): ", message)
    return m.group(1) if m else None


# -- per-user limits -------------------------------------------------------------------------------
class UserLimits:
    """Per user, on this process: requests in flight (``concurrency``) and a token bucket of ``rate``
    requests a second with bursts of ``2 * rate``; open event streams counted apart (``streams``)."""

    def __init__(self, concurrency: int, rate: float, streams: int):
        self.concurrency, self.rate, self.streams = concurrency, rate, streams
        self.burst = max(1.0, 2 * rate)
        self.in_flight: dict[str, int] = {}
        self.open_streams: dict[str, int] = {}
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, user: str) -> None:
        """Spend one token of ``user``'s bucket, or ApiError 429."""
        now = time.monotonic()
        tokens, at = self.buckets.get(user, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate
            raise ApiError(429, f"over {self.rate:g} requests a second for user {user} (LENSFLOW_API_USER_RATE)",
                           headers={"Retry-After": str(max(1, round(wait + 0.5)))})
        self.buckets[user] = (tokens - 1.0, now)
        if len(self.buckets) > 100_000:  # forget idle users
            self.buckets = {u: v for u, v in self.buckets.items() if now - v[1] < 60}

    def enter(self, user: str, table: dict[str, int], most: int, what: str) -> None:
        if table.get(user, 0) >= most:
            raise ApiError(429, f"user {user} already has {most} {what} (LENSFLOW_API_USER_"
                                f"{'CONCURRENCY' if table is self.in_flight else 'SSE_PER_USER'})",
                           headers={"Retry-After": "1"})
        table[user] = table.get(user, 0) + 1

    @staticmethod
    def leave(user: str, table: dict[str, int]) -> None:
        n = table.get(user, 1) - 1
        if n:
            table[user] = n
        else:
            table.pop(user, None)


# -- response models (the OpenAPI document is generated from these) ---------------------------------
class ErrorBody(BaseModel):
    error: str = Field(description="One line saying what went wrong.")
    parameter: Optional[str] = Field(None, description="The parameter at fault, when one is.")


class UploadAccepted(BaseModel):
    image_id: str = Field(description="The image's id: the same bytes by the same user are one image.")
    run_id: str
    url: str = Field(description="Where its analysis will be: GET this.")
    status: str = "submitted"


class Hit(BaseModel):
    image_id: str
    score: float
    taken_at: Optional[str] = None
    tags: list[str] = []
    caption: Optional[str] = None
    uri: Optional[str] = None
    gps: Optional[list[float]] = None
    semantic_score: Optional[float] = None
    keyword_matches: Optional[int] = None


class SearchAnswer(BaseModel):
    results: list[Hit]
    next_cursor: Optional[str] = Field(None, description="Pass as `cursor` for the next page; null on the last.")


class ImageItem(BaseModel):
    image_id: str
    caption: Optional[str] = None
    taken_at: Optional[str] = None
    gps: Optional[list[float]] = None


class ImageList(BaseModel):
    results: list[ImageItem]
    next_cursor: Optional[str] = None


class Person(BaseModel):
    person_id: str
    name: Optional[str] = None
    faces: int
    images: int


class PeopleAnswer(BaseModel):
    people: list[Person]
    next_cursor: Optional[str] = None


class Enrolled(BaseModel):
    person_id: str
    faces: int


class NameBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class Renamed(BaseModel):
    person_id: str
    name: str
    faces: int


class ReanalyzeBody(BaseModel):
    image_ids: list[str] = Field(min_length=1, max_length=1000)
    stage: str


class ReanalyzeAnswer(BaseModel):
    results: list[dict[str, Any]]


class DevLogin(BaseModel):
    token: str
    user: str
    expires_in: int


ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 429, 503)}


# -- the app ----------------------------------------------------------------------------------------
def create_app(settings: Settings, service: ReadService) -> FastAPI:
    """The read service's ASGI app over ``service``."""
    app = FastAPI(title="lensflow read service", version="1.0.0",
                  description="Per-user access to lensflow's analysed images: upload, analysis, search, faces, "
                              "live notifications. Every /v1 route takes the user from its bearer token (a JWT).",
                  openapi_url="/openapi.json", docs_url="/docs", redoc_url=None)
    verifier = auth.Verifier(settings)
    limits = UserLimits(settings.api_user_concurrency, settings.api_user_rate, settings.api_sse_per_user)
    bearer = HTTPBearer(auto_error=False, description="A JWT whose `sub` is the user id (`lensflow token issue`).")
    m = metrics()
    app.state.service = service

    # errors --------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, str(exc), exc.parameter, exc.headers)

    @app.exception_handler(auth.AuthError)
    async def _auth_error(request: Request, exc: auth.AuthError):
        return error(exc.status, str(exc), headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        loc = [str(x) for x in first.get("loc", ()) if x not in ("query", "body", "path", "header")]
        parameter = loc[0] if loc else None
        return error(400, f"{parameter or 'request'}: {first.get('msg', 'invalid')}", parameter)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path} (see /openapi.json)"
        return error(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _failed(request: Request, exc: Exception):
        return answer_failure(request, exc)

    def answer_failure(request: Request, exc: BaseException) -> JSONResponse:
        if isinstance(exc, ApiError):
            return error(exc.status, str(exc), exc.parameter, exc.headers)
        if isinstance(exc, auth.AuthError):
            return error(exc.status, str(exc), headers={"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
        if isinstance(exc, SearchNotFound):
            return error(404, str(exc))
        if isinstance(exc, SearchError):
            return error(400, str(exc), _parameter_of(str(exc)))
        if isinstance(exc, ImageRejected):
            return error(exc.status, str(exc))
        if isinstance(exc, NotFound):
            return error(404, str(exc))
        if isinstance(exc, Unavailable):
            log.warning("api_unavailable", path=request.url.path, reason=str(exc))
            return error(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_S)})
        if is_transient(exc):
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            log.warning("api_unavailable", path=request.url.path, error=repr(exc)[:500])
            return error(503, f"{_store_of(exc)} is unavailable ({type(exc).__name__}: {reason})",
                         headers={"Retry-After": str(RETRY_AFTER_S)})
        log.error("api_failed", path=request.url.path, error=repr(exc)[:500], exc_info=exc)
        return error(500, f"internal error ({type(exc).__name__}); see the service's log")

    # every response: metrics and headers ---------------------------------------------------------------
    @app.middleware("http")
    async def _observe(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001  (answered as JSON, counted)
            response = answer_failure(request, exc)
        route = getattr(request.scope.get("route"), "path", None) or "unmatched"
        if not request.url.path.startswith("/v1/events"):
            m.seconds.labels(route).observe(time.perf_counter() - started)
        m.requests.labels(route, request.method, str(response.status_code)).inc()
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if not request.url.path.startswith("/docs"):
            response.headers.setdefault("Content-Security-Policy",
                                        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
        return response

    # credentials ------------------------------------------------------------------------------------
    async def principal(request: Request,
                        credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> auth.Principal:
        header = request.headers.get("Authorization")
        if verifier.blocking:
            return await asyncio.get_running_loop().run_in_executor(None, verifier.verify, header)
        return verifier.verify(header)

    async def admin(who: auth.Principal = Depends(principal)) -> auth.Principal:
        if not who.admin:
            raise auth.AuthError("this action needs a token with the admin scope", status=403)
        return who

    class Admitted:
        """``async with Admitted(who)``: the user's concurrency and rate limits, and the stores open."""

        def __init__(self, who: auth.Principal):
            self.user = who.user

        async def __aenter__(self):
            limits.take(self.user)
            limits.enter(self.user, limits.in_flight, limits.concurrency, "requests in flight")
            if not service.ready():
                limits.leave(self.user, limits.in_flight)
                raise Unavailable("the stores are not open yet")
            return self

        async def __aexit__(self, *exc):
            limits.leave(self.user, limits.in_flight)
            return False

    def limited(request: Request, limit: int) -> Request:
        """``request`` whose body is refused (413) past ``limit`` bytes, as it arrives."""
        received = 0

        async def receive():
            nonlocal received
            message = await request.receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ImageRejected(413, f"the request body is over the limit of {limit / 1e6:.1f} MB "
                                             "(LENSFLOW_MAX_BYTES)")
            return message

        return Request(request.scope, receive)

    # operations ----------------------------------------------------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"alive": True}

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        if service.ready():
            return {"ready": True}
        return JSONResponse({"ready": False, "error": getattr(service.stores, "error", None) or "stores not open yet"},
                            status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # the gallery -------------------------------------------------------------------------------------
    if GALLERY.is_dir():
        app.mount("/gallery", StaticFiles(directory=GALLERY), name="gallery")

    @app.get("/", include_in_schema=False)
    async def index():
        page = GALLERY / "index.html"
        if not page.is_file():
            raise NotFound("the gallery is not installed")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    @app.post("/v1/dev/login", response_model=DevLogin, responses={404: {"model": ErrorBody}}, tags=["credentials"],
              summary="The gallery's development login (loopback, locally generated secret only)")
    async def dev_login(request: Request):
        if not (auth.uses_local_secret(settings) and is_loopback(settings.api_host)):
            raise NotFound("no development login here: sign in with a token")
        # a page of another site must not get a token: neither under its own name resolved to 127.0.0.1
        # (DNS rebinding: its Host), nor by posting here from its own origin
        name = _host_name(request.headers.get("Host"))
        if name is None or not is_loopback(name):
            raise auth.AuthError("the development login answers only requests whose Host is a loopback address "
                                 "(127.0.0.1, [::1] or localhost)", status=403)
        origin = request.headers.get("Origin")
        if origin is not None and not _loopback_origin(origin):
            raise auth.AuthError("the development login refuses requests from pages of another origin", status=403)
        token = auth.issue(settings, settings.api_dev_user, 3600)
        return DevLogin(token=token, user=settings.api_dev_user, expires_in=3600)

    # images ------------------------------------------------------------------------------------------
    @app.post("/v1/images", status_code=202, response_model=UploadAccepted, tags=["images"],
              responses={**ERRORS, 413: {"model": ErrorBody}, 415: {"model": ErrorBody}},
              summary="Upload a photo (the request body, or multipart field `file`)",
              openapi_extra={"requestBody": {"content": {
                  "image/*": {"schema": {"type": "string", "format": "binary"}},
                  "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                     "properties": {"file": {"type": "string", "format": "binary"}}}}},
                  "required": True}})
    async def upload(request: Request, who: auth.Principal = Depends(principal)):
        async with Admitted(who):
            limit = settings.max_bytes
            body = limited(request, limit + MULTIPART_OVERHEAD)
            name = None
            if (request.headers.get("content-type") or "").startswith("multipart/form-data"):
                form = await body.form(max_files=1, max_fields=5)
                part = form.get("file")
                if part is None or isinstance(part, str):
                    raise ApiError(400, "file: send the photo as the multipart field `file`", "file")
                data = await part.read()
                name = part.filename
                await form.close()
            else:
                chunks, size = [], 0
                async for chunk in body.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ImageRejected(413, f"the photo is over the limit of {limit / 1e6:.1f} MB (LENSFLOW_MAX_BYTES)")
                    chunks.append(chunk)
                data = b"".join(chunks)
            if not data:
                raise ApiError(400, "the request has no photo: send it as the body or the multipart field `file`")
            suffix = await service.model_calls(service.check_upload, data)
            done = await service.store_calls(service.upload, who.user, data, suffix, (name or "")[:200] or None)
            return UploadAccepted(image_id=done["image_id"], run_id=done["run_id"],
                                  url=f"/{VERSION}/images/{done['image_id']}")

    @app.get("/v1/images", response_model=ImageList, responses=ERRORS, tags=["images"],
             summary="The caller's images, in id order, page by page")
    async def images(who: auth.Principal = Depends(principal), limit: int = Q(24, ge=1, le=100),
                     cursor: Optional[str] = Q(None, max_length=64)):
        async with Admitted(who):
            results, nxt = await service.store_calls(service.image_ids, who.user, cursor or "", limit)
            return ImageList(results=[ImageItem(**r) for r in results], next_cursor=nxt)

    def image_id_ok(image_id: str) -> str:
        if not re.fullmatch(r"[0-9A-Za-z._:-]{1,128}", image_id):
            raise ApiError(400, "image_id: not an image id", "image_id")
        return image_id

    @app.get("/v1/images/{image_id}", responses=ERRORS, tags=["images"],
             summary="The analysis, as `lensflow show --json` prints it (status `processing` while in flight)")
    async def image(image_id: str, who: auth.Principal = Depends(principal)) -> dict[str, Any]:
        async with Admitted(who):
            doc = await service.store_calls(service.image, who.user, image_id_ok(image_id))
            return JSONResponse(_jsonable(doc))

    @app.get("/v1/images/{image_id}/derivative.jpg", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}},
             response_class=Response, tags=["images"], summary="The normalised image the stages read")
    async def derivative(image_id: str, who: auth.Principal = Depends(principal)):
        async with Admitted(who):
            data, _ = await service.store_calls(service.derivative, who.user, image_id_ok(image_id))
            return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/images/{image_id}/render.jpg", responses={**ERRORS, 200: {"content": {"image/jpeg": {}}}},
             response_class=Response, tags=["images"], summary="The object, face and text boxes drawn on the image")
    async def rendered(image_id: str, who: auth.Principal = Depends(principal)):
        async with Admitted(who):
            data, doc = await service.store_calls(service.derivative, who.user, image_id_ok(image_id))
            jpeg = await service.model_calls(service.rendered, data, doc)
            return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, no-cache"})

    # search ------------------------------------------------------------------------------------------
    @app.get("/v1/search", response_model=SearchAnswer, responses=ERRORS, tags=["search"],
             summary="Find the caller's images by text, by example, by tag or by person, page by page")
    async def search(request: Request, who: auth.Principal = Depends(principal),
                     text: Optional[str] = Q(None, max_length=500, description="Describe what you look for."),
                     like: Optional[str] = Q(None, max_length=128, description="An image id: find similar images."),
                     tag: Optional[str] = Q(None, max_length=200, description="A tag (object, place, event, camera, year …)."),
                     person: Optional[str] = Q(None, max_length=200, description="A person's name."),
                     taken_after: Optional[str] = Q(None, description="ISO date, e.g. 2020-01-01."),
                     near: Optional[str] = Q(None, description="LAT,LON,KM"),
                     safe: Optional[str] = Q(None, description="true: only images scored safe."),
                     limit: int = Q(10, ge=1, le=100),
                     cursor: Optional[str] = Q(None, max_length=512, description="`next_cursor` of the previous page.")):
        unknown = sorted(set(request.query_params) - {"text", "like", "tag", "person", "taken_after", "near", "safe",
                                                      "limit", "cursor"})
        if unknown:
            raise ApiError(400, f"{unknown[0]}: unknown parameter (the user comes from the token)", unknown[0])
        params = {k: v for k, v in {"user": who.user, "text": text, "like": like, "tag": tag, "person": person,
                                    "taken_after": taken_after, "near": near, "safe": safe, "limit": str(limit),
                                    "cursor": cursor}.items() if v}
        q = Query.parse(params)
        async with Admitted(who):
            vector = await service.model_calls(service.embed, q.text) if q.text else None
            pool = service.store_calls if q.tag else service.qdrant_calls  # text, like, person: Qdrant
            page = await pool(service.search, q, vector)
            return SearchAnswer(results=[Hit(**{k: v for k, v in h.items() if k in Hit.model_fields}) for h in page.results],
                                next_cursor=page.next_cursor)

    # faces ---------------------------------------------------------------------------------------------
    @app.post("/v1/faces/enroll", response_model=Enrolled, responses={**ERRORS, 413: {"model": ErrorBody}}, tags=["faces"],
              summary="Enrol a named person from photos (multipart: `name` and one or more `photos`)")
    async def enroll(request: Request, who: auth.Principal = Depends(principal)):
        async with Admitted(who):
            body = limited(request, ENROLL_MAX_PHOTOS * (settings.max_bytes + MULTIPART_OVERHEAD))
            if not (request.headers.get("content-type") or "").startswith("multipart/form-data"):
                raise ApiError(415, "send multipart/form-data with `name` and one or more `photos`")
            form = await body.form(max_files=ENROLL_MAX_PHOTOS, max_fields=5)
            try:
                name = form.get("name")
                photos = [p for p in form.getlist("photos") if not isinstance(p, str)]
                if not isinstance(name, str) or not name.strip() or len(name) > 200:
                    raise ApiError(400, "name: the person's name is required (1-200 characters)", "name")
                if not photos:
                    raise ApiError(400, "photos: at least one photo is required", "photos")
                datas = [await p.read() for p in photos]
            finally:
                await form.close()
            largest = []  # every photo is checked before anything is enrolled
            for i, data in enumerate(datas, start=1):
                faces = await service.model_calls(service.faces_in, data, i)
                if not faces:
                    raise ApiError(400, f"photos: no face found in photo {i}", "photos")
                largest.append(max(faces, key=_area))
            model_name = (await service.model_calls(service.face_model)).name
            enrolled = await service.qdrant_calls(service.enroll, who.user, name.strip(),
                                                 [f["encoding"] for f in largest], model_name)
            return Enrolled(person_id=enrolled[0], faces=len(enrolled))

    @app.get("/v1/people", response_model=PeopleAnswer, responses=ERRORS, tags=["faces"],
             summary="The caller's people (named and clustered), page by page")
    async def people(who: auth.Principal = Depends(principal), limit: int = Q(50, ge=1, le=200),
                     cursor: Optional[str] = Q(None, max_length=128)):
        async with Admitted(who):
            found, nxt = await service.qdrant_calls(service.people, who.user, cursor or "", limit)
            return PeopleAnswer(people=[Person(**p) for p in found], next_cursor=nxt)

    @app.put("/v1/people/{person_id}/name", response_model=Renamed, responses=ERRORS, tags=["faces"],
             summary="Name one of the caller's people")
    async def rename(person_id: str, body: NameBody, who: auth.Principal = Depends(principal)):
        async with Admitted(who):
            name = body.name.strip()
            if not name:
                raise ApiError(400, "name: must not be blank", "name")
            changed = await service.qdrant_calls(service.rename, who.user, person_id[:128], name)
            if not changed:
                raise NotFound(f"person {person_id} not found")
            return Renamed(person_id=person_id, name=name, faces=changed)

    # events --------------------------------------------------------------------------------------------
    @app.get("/v1/events", tags=["events"], responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
             response_class=StreamingResponse,
             summary="Server-Sent Events of the caller's own images.analyzed (Last-Event-ID resumes)")
    async def events(request: Request, who: auth.Principal = Depends(principal)):
        try:
            start = parse_position(request.headers.get("Last-Event-ID"))
        except BadPosition as exc:
            raise ApiError(400, str(exc), "Last-Event-ID") from None
        limits.take(who.user)
        limits.enter(who.user, limits.open_streams, limits.streams, "open event streams")
        try:
            loop = asyncio.get_running_loop()
            reader = await service.store_calls(lambda: AnalyzedReader(settings, service.publisher.codec, who.user,
                                                                      start, loop))
        except BaseException:
            limits.leave(who.user, limits.open_streams)
            raise
        m.sse.inc()

        async def body():
            try:
                async for chunk in stream(reader):
                    yield chunk
            finally:
                m.sse.dec()
                limits.leave(who.user, limits.open_streams)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # operators -----------------------------------------------------------------------------------------
    @app.get("/v1/admin/images/{image_id}", responses={**ERRORS, 403: {"model": ErrorBody}}, tags=["admin"],
             summary="(admin) Any user's image")
    async def admin_image(image_id: str, who: auth.Principal = Depends(admin)) -> dict[str, Any]:
        async with Admitted(who):
            doc = await service.store_calls(service.image, None, image_id_ok(image_id))
            return JSONResponse(_jsonable(doc))

    @app.post("/v1/admin/reanalyze", status_code=202, response_model=ReanalyzeAnswer,
              responses={**ERRORS, 403: {"model": ErrorBody}}, tags=["admin"],
              summary="(admin) Run one stage again on images of any user")
    async def admin_reanalyze(body: ReanalyzeBody, who: auth.Principal = Depends(admin)):
        async with Admitted(who):
            for i in body.image_ids:
                image_id_ok(i)
            try:
                results = await service.store_calls(service.reanalyze, body.image_ids, body.stage)
            except ValueError as exc:
                raise ApiError(400, f"stage: {exc}", "stage") from None
            return ReanalyzeAnswer(results=results)

    return app


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


def _store_of(exc: BaseException) -> str:
    module = type(exc).__module__ or ""
    if module.startswith("cassandra"):
        return "Cassandra"
    if module.startswith(("qdrant_client", "grpc", "httpx", "httpcore")):
        return "Qdrant"
    if module.startswith(("confluent_kafka", "aiokafka")):
        return "Kafka"
    return "a store"


def _area(face: dict) -> float:
    box = face["box"]
    return (box["x2"] - box["x1"]) * (box["y2"] - box["y1"])


def _jsonable(doc: dict) -> Any:
    """``doc`` as ``show --json`` writes it (``default=str`` for dates and the like)."""
    import json

    return json.loads(json.dumps(doc, default=str))

