"""What the read service does, as plain synchronous calls over the stores, storage, Kafka and models;
``api/app.py`` runs each of them off its event loop, on a bounded pool (``Offload``), under a deadline.

Every call takes the user from the caller's credential (``Principal``) and filters by it: an image of
another user is answered as missing, never as forbidden.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from PIL import Image, UnidentifiedImageError

from lensflow.agents.face_models import face_model as make_face_model
from lensflow.agents.preprocess import Limits, prepare
from lensflow.agents.textembed import TextEmbedder
from lensflow.streams.decode_cost import decode_cost
from lensflow.streams.budget import MemoryBudget
from lensflow.streams.errors import StageFailure
from lensflow.streams.faces_store import FaceGallery
from lensflow.streams.models import ModelCache
from lensflow.streams.search import Query, SearchPage, SearchService
from lensflow.streams.settings import Settings
from lensflow.streams.topology import PREPARED
from lensflow.streams.uploads import (FORMAT_EXTENSIONS, Publisher, new_run_id, reanalysable_stages, reanalysis,
                                      storage_for, store_upload, upload_record)
from lensflow.streams.view import document_of, render

#: seconds a request waits for the stores (a free store thread, then the call) before answering 503:
#: the Cassandra driver's own request timeout (streams/store.py connect_cassandra)
STORE_TIMEOUT_S = 10.0
#: seconds a request waits for the models (a free model thread, then a decode or an inference), loading
#: a model the first time included, before answering 503
MODEL_TIMEOUT_S = 60.0
#: threads of the store calls: at most this many requests wait on a frozen store at once
STORE_THREADS = 4
#: threads of decodes and inferences (each decode is admitted against the decode budget too)
MODEL_THREADS = 1
#: what a 503 suggests (Retry-After, seconds)
RETRY_AFTER_S = 5
#: uploads remembered as in flight by this process (their owner answers "processing" until stored)
PENDING_KEEP = 10_000
#: people served per page at most
PEOPLE_PAGE_MAX = 200
_MIB = 1 << 20


class Unavailable(Exception):
    """The service gave up waiting for the stores, the models or Kafka: answered 503."""


class ImageRejected(ValueError):
    """An uploaded image refused before decoding; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class NotFound(LookupError):
    """A missing object, or another user's: answered 404 either way."""


def open_checked(data: bytes, max_bytes: int, max_pixels: int, formats: list[str] | None = None) -> Image.Image:
    """``data`` opened as a PIL image after the limits are checked, before anything decodes it:
    over ``max_bytes`` → ImageRejected 413; not an image, or a format not in ``formats`` → 415; a header
    over ``max_pixels`` → 400. ``Image.open`` only reads the header (decoding waits for ``load()``)."""
    if len(data) > max_bytes:
        raise ImageRejected(413, f"{len(data) / 1e6:.1f} MB is over the limit of {max_bytes / 1e6:.1f} MB "
                                 "(LENSFLOW_MAX_BYTES)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's own cap (2x MAX_IMAGE_PIXELS), checked in open()
        raise ImageRejected(400, f"too many pixels: over the limit of {max_pixels} (LENSFLOW_MAX_PIXELS)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageRejected(415, f"not a readable image ({type(exc).__name__})") from None
    if formats is not None and img.format not in formats and not (img.format == "MPO" and "JPEG" in formats):
        img.close()
        raise ImageRejected(415, f"format {img.format} is not accepted (LENSFLOW_FORMATS: {', '.join(formats)})")
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageRejected(400, f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels} (LENSFLOW_MAX_PIXELS)")
    return img


class Offload:
    """Runs blocking calls (store queries, decodes, inference) off the event loop, on ``threads``
    threads of its own. A call first waits for a free thread, then for its result, ``timeout_s``
    seconds in all, else raises ``Unavailable`` naming ``what``. A call given up on is not stopped
    (Python cannot stop a thread): it keeps its thread until it returns, so a frozen store holds
    ``threads`` threads and every later request answers 503 once its own deadline passes, never
    queueing without end."""

    def __init__(self, name: str, threads: int, timeout_s: float, what: str):
        self.threads = threads
        self.timeout_s = timeout_s
        self.what = what
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"api-{name}")
        self._free: asyncio.Semaphore | None = None  # of the serving loop, made there on first use

    async def __call__(self, fn: Callable, *args: Any):
        loop = asyncio.get_running_loop()
        if self._free is None:
            self._free = asyncio.Semaphore(self.threads)
        deadline = loop.time() + self.timeout_s
        try:
            await asyncio.wait_for(self._free.acquire(), self.timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable(f"{self.what} did not answer within {self.timeout_s:g} s (every thread of the "
                              "service waits on earlier requests)") from None
        try:
            future = loop.run_in_executor(self.pool, fn, *args)
        except BaseException:
            self._free.release()
            raise
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise Unavailable(f"{self.what} did not answer within {self.timeout_s:g} s") from None

    def _done(self, future) -> None:
        self._free.release()
        if not future.cancelled():
            future.exception()  # retrieved: a call given up on must not log "exception was never retrieved"

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _StoresView:
    """The read service's view of a ``Stores`` (``streams/app.py``): its clients, once open."""

    stores: Any

    @property
    def cassandra(self):
        return self.stores.cassandra

    @property
    def qdrant(self):
        return self.stores.qdrant


class OwnStores(_StoresView):
    """The stores of a read service running on its own (a Qdrant server): opened in the background,
    retried until they answer, so the process starts and reports not ready meanwhile."""

    def __init__(self, settings: Settings):
        from lensflow.streams.app import Stores

        self.stores = Stores(settings)
        self.stores.want("cassandra", "qdrant")
        self.error: str | None = None
        self._opened = threading.Event()
        self._stop = threading.Event()
        threading.Thread(target=self._open, name="api-open-stores", daemon=True).start()

    def _open(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.stores.open()
                self._opened.set()
                self.error = None
                return
            except Exception as exc:  # noqa: BLE001  (reported by /readyz, retried)
                self.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def ready(self) -> bool:
        return self._opened.is_set()

    def close(self) -> None:
        self._stop.set()
        if self._opened.is_set():
            self.stores.close()


class SharedStores(_StoresView):
    """The stores of the worker that hosts the read service (Qdrant local mode admits one process)."""

    def __init__(self, stores):
        self.stores = stores
        self.error = None

    def ready(self) -> bool:
        return self.stores.ready.is_set() and self.stores.cassandra is not None and self.stores.qdrant is not None

    def close(self) -> None:  # the worker closes them
        pass


class ReadService:
    """The read side over ``stores`` (``OwnStores`` or ``SharedStores``). ``budget_ctx``: the hosting
    worker's context, so enrolment decodes share its decode budget; None on its own process."""

    def __init__(self, settings: Settings, stores, budget_ctx=None):
        self.settings = settings
        self.stores = stores
        self.searcher = SearchService(stores, settings, embedder_factory=lambda: TextEmbedder(
            ModelCache(settings.models_path)).load())
        self.store_calls = Offload("stores", STORE_THREADS, STORE_TIMEOUT_S, "Cassandra or Qdrant")
        # calls that need Qdrant wait in a pool of their own, so a slow Qdrant (local mode answers on one
        # thread) cannot hold every store thread while Cassandra-only requests (tag search, images, show)
        # queue behind it (bench/api.py measured a 72 ms tag search at 6.7 s p50 after a like cell). As
        # many threads as the store pool: a search's Cassandra reads overlap other searches' Qdrant calls
        self.qdrant_calls = Offload("qdrant", STORE_THREADS, STORE_TIMEOUT_S, "Qdrant (or Cassandra)")
        self.model_calls = Offload("models", MODEL_THREADS, MODEL_TIMEOUT_S, "the models")
        self.storage = storage_for(settings)
        self._publisher: Publisher | None = None
        self._publisher_lock = threading.Lock()
        self._face_model = None
        self._face_lock = threading.Lock()
        self._budget_ctx = budget_ctx
        self._budget: MemoryBudget | None = None
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._pending_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------
    def ready(self) -> bool:
        return self.stores.ready()

    @property
    def publisher(self) -> Publisher:
        with self._publisher_lock:
            if self._publisher is None:
                self._publisher = Publisher.for_settings(self.settings)
            return self._publisher

    def budget(self) -> MemoryBudget:
        if self._budget is None:
            if self._budget_ctx is not None:
                from lensflow.streams.budget import decode_budget

                self._budget = decode_budget(self._budget_ctx)
            else:
                Image.MAX_IMAGE_PIXELS = self.settings.max_pixels
                self._budget = MemoryBudget(self.settings.decode_memory_mb * _MIB, malloc_mmap_threshold=None)
        return self._budget

    def close(self) -> None:
        self.store_calls.close()
        self.qdrant_calls.close()
        self.model_calls.close()
        self.stores.close()

    # -- images -----------------------------------------------------------------------------------
    def check_upload(self, data: bytes) -> str:
        """(model thread) The upload's extension, once its header passed the limits (ImageRejected)."""
        s = self.settings
        img = open_checked(data, s.max_bytes, s.max_pixels, list(s.formats))
        try:
            return FORMAT_EXTENSIONS.get(img.format or "", "")
        finally:
            img.close()

    def upload(self, user: str, data: bytes, suffix: str, file_name: str | None) -> dict:
        """(store thread) Store the bytes under ``uploads/<user>/`` and produce their ``ImageUploaded``,
        as ``lensflow submit`` does: the same bytes give the same image id."""
        from lensflow.streams.uploads import NotDelivered

        image_id, uri = store_upload(self.settings, self.storage, user, data, suffix)
        record = upload_record(user, image_id, uri, len(data), new_run_id(image_id), None, "lensflow-api",
                               {"file": file_name} if file_name else None)
        try:
            self.publisher.upload([record])
        except NotDelivered as exc:
            raise Unavailable(f"Kafka: {exc}") from None
        with self._pending_lock:
            self._pending[image_id] = (user, time.time())
            self._pending.move_to_end(image_id)
            while len(self._pending) > PENDING_KEEP:
                self._pending.popitem(last=False)
        return {"image_id": image_id, "run_id": record["run_id"]}

    def image(self, user: str | None, image_id: str) -> dict:
        """(store thread) The image as ``show --json`` prints it, its owner's (``user``; None: any, for
        admins); ``{"status": "processing"}`` for an upload of this process still in flight."""
        row = self.stores.cassandra.image(image_id)
        if row is None or (user is not None and row.get("user_id") != user):
            with self._pending_lock:
                pending = self._pending.get(image_id)
            if row is None and pending is not None and (user is None or pending[0] == user):
                return {"image_id": image_id, "user_id": pending[0], "status": "processing",
                        "analysis": None, "submitted_at": pending[1]}
            raise NotFound(f"image {image_id} not found")
        with self._pending_lock:
            self._pending.pop(image_id, None)
        return document_of(row)

    def derivative(self, user: str | None, image_id: str) -> tuple[bytes, dict]:
        """(store thread) The stored derivative's bytes, and the image document."""
        doc = self.image(user, image_id)
        uri = doc.get("uri")
        if not uri:
            raise NotFound(f"image {image_id} has no stored image yet (status {doc.get('status')})")
        return self.storage.read(uri, self.settings.max_bytes), doc

    def rendered(self, data: bytes, doc: dict) -> bytes:
        """(model thread) The boxes drawn on the derivative, as ``show --render`` draws them (JPEG)."""
        if doc.get("analysis") is None:
            raise NotFound(f"image {doc['image_id']} has no stored analysis to draw")
        picture = Image.open(io.BytesIO(data))
        picture.load()
        out = io.BytesIO()
        render(picture, doc["analysis"]).save(out, format="JPEG", quality=90)
        return out.getvalue()

    def image_ids(self, user: str, after: str, limit: int) -> tuple[list[dict], str | None]:
        """(store thread) One page of the user's images (id order) with caption and time."""
        ids = self.stores.cassandra.image_ids_page(user, after, limit + 1)
        more = len(ids) > limit
        ids = ids[:limit]
        rows = self.stores.cassandra.rows(ids)
        results = []
        for i in ids:
            r = rows.get(i)
            if r is None or r.user_id != user:
                continue
            results.append({"image_id": i, "caption": r.caption, "taken_at": r.taken_at.isoformat() if r.taken_at else None,
                            "gps": [r.gps_lat, r.gps_lon] if r.gps_lat is not None else None})
        return results, (ids[-1] if more and ids else None)

    # -- search -----------------------------------------------------------------------------------
    def embed(self, text: str) -> list[float]:
        """(model thread) A text query's embedding."""
        return self.searcher.embed(text)

    def search(self, q: Query, vector: list[float] | None) -> SearchPage:
        """(store thread) One page of hits."""
        return self.searcher.page(q, vector)

    # -- faces ------------------------------------------------------------------------------------
    def face_model(self):
        """(model thread) The faces stage's model (LENSFLOW_FACES_MODEL): enrolments and the stage share
        one encoding space."""
        with self._face_lock:
            if self._face_model is None:
                self._face_model = make_face_model(self.settings, ModelCache(self.settings.models_path)).load()
            return self._face_model

    def faces_in(self, data: bytes, number: int) -> list[dict]:
        """(model thread) The faces found in one enrolment photo. Its header is checked first; then it is
        normalised as an upload is (oriented, RGB, long side at most LENSFLOW_MAX_SIDE) under the decode
        budget and timeout, and the model runs on that derivative, as the faces stage does."""
        s = self.settings
        try:
            open_checked(data, s.max_bytes, s.max_pixels).close()  # header only
            budget = self.budget()
            outcome = prepare(data, Limits.from_settings(s), budget)
            if outcome.error is not None:
                code = str(outcome.error.code)
                if code == "decode_timeout":
                    raise Unavailable(f"photo {number}: {outcome.error.message}")
                raise ImageRejected(413 if code in ("too_large", "over_memory_budget") else 400, outcome.error.message)
            img = Image.open(io.BytesIO(outcome.derivative if outcome.derivative is not None else data))
            model = self.face_model()
            with budget.reserve(decode_cost(img, "JPEG", img.size, reuse=True), what="enrolment photo"):
                return model.predict([img.convert("RGB")])[0]
        except ImageRejected as exc:
            raise ImageRejected(exc.status, f"photo {number}: {exc}") from None
        except StageFailure as exc:  # the budget: over_memory_budget
            raise ImageRejected(413, f"photo {number}: {exc.message}") from None

    def enroll(self, user: str, name: str, encodings: list, model_name: str) -> list[str]:
        """(store thread) Enrol each encoding as a reference face of ``name``."""
        return [self.stores.qdrant.run(lambda c, e=e: FaceGallery(c, model=model_name).enroll(user, name, e))
                for e in encodings]

    def rename(self, user: str, person: str, name: str) -> int:
        """(store thread) Name a person; the number of faces renamed (0: no such person of this user)."""
        return self.stores.qdrant.run(lambda c: FaceGallery(c).rename(user, person, name))

    def people(self, user: str, after: str, limit: int) -> tuple[list[dict], str | None]:
        """(store thread) One page of the user's people, in person id order."""
        people = self.stores.qdrant.run(lambda c: FaceGallery(c, create=False).people(user))
        ordered = sorted((pid, p) for pid, p in people.items() if pid > after)
        page = ordered[:limit]
        out = [{"person_id": pid, "name": p["name"], "faces": p["faces"], "images": len(p["images"])} for pid, p in page]
        return out, (page[-1][0] if len(ordered) > limit and page else None)

    # -- operators --------------------------------------------------------------------------------
    def reanalyze(self, image_ids: list[str], stage: str) -> list[dict]:
        """(store thread) Run one pixel stage again on these images (any user's), as ``lensflow
        reanalyze`` does: each image's stored preprocess result is sent again in merge mode."""
        if stage not in reanalysable_stages():
            raise ValueError(f"stage must be one of {reanalysable_stages()}")
        codec = self.publisher.codec
        batch = f"reanalyze-api-{int(time.time())}"
        requests, out = [], []
        for image_id in image_ids:
            doc = self.stores.cassandra.image(image_id)
            if doc is None:
                raise NotFound(f"image {image_id} not found")
            prepared, why = reanalysis(codec, self.stores.cassandra, image_id, doc["run_id"], stage, batch)
            if prepared is None:
                out.append({"image_id": image_id, "status": "skipped", "reason": why})
                continue
            requests.append((image_id, prepared))
            out.append({"image_id": image_id, "status": "sent", "run_id": prepared["run_id"]})
        from lensflow.streams.uploads import NotDelivered

        try:
            self.publisher.send(PREPARED, "ImagePrepared", requests)
        except NotDelivered as exc:
            raise Unavailable(f"Kafka: {exc}") from None
        return out

