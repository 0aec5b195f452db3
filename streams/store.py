"""The store layer: every CQL statement lensflow runs and every call on Qdrant's ``images``
collection, in one module (the join's writes and reads, search, `show`, `reanalyze`). Every write is
an idempotent upsert keyed by image id (and run id), so at-least-once delivery never duplicates a
row or a point. Nothing here retries: callers wrap calls in the error policy (``RetryPolicy``), which
retries transient faults and lets a store's refusal (``InvalidRequest``, a wrong vector size) fail
that image alone.

Cassandra: cassandra-driver with prepared statements, awaited from asyncio through the driver's
callbacks (the event loop never blocks on a query). Qdrant: a server when ``LENSFLOW_QDRANT_URL``
is set, else qdrant-client local mode in ``DATA_DIR/qdrant``; local mode locks its folder to one
process, so locally only the worker that runs the join opens it, and its calls run in one dedicated
thread (the local client is synchronous and not thread-safe).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, NamedTuple

import structlog

from .records import point_id

log = structlog.get_logger("lensflow.store")

#: Named vectors of the Qdrant ``images`` collection (name -> dimension).
IMAGE_VECTORS = {"visual": 1280, "semantic": 384}
FACE_DIM = 128

def check_vectors(vectors: dict) -> None:
    """Refuse (``StoreRejected``: permanent, that image alone) a named vector of the wrong dimension
    before a store sees it."""
    from .errors import StoreRejected

    for name, vector in vectors.items():
        if vector is not None and len(vector) != IMAGE_VECTORS[name]:
            raise StoreRejected(f"{name} vector has {len(vector)} values, the store holds {IMAGE_VECTORS[name]}")


IMAGE_COLUMNS = [
    "image_id", "user_id", "source_uri", "uri", "format", "mime_type", "size_bytes", "sha256", "width", "height",
    "original_width", "original_height", "orientation", "taken_at", "taken_at_local", "tz_offset", "camera_make",
    "camera_model", "lens_make", "lens_model", "exposure_time_s", "f_number", "iso", "focal_length_mm", "gps_lat",
    "gps_lon", "gps_alt_m", "caption", "scene", "visual", "status", "error_code", "error_message", "run_id",
    "analysis_version", "uploaded_at", "last_analyzed", "nsfw_score", "place_city", "place_region", "place_country",
    "place_country_code", "title", "description", "keywords", "rating", "creator", "duplicate_of", "near_duplicates",
]


def bind_values(row: dict, columns: list[str], first_write: bool) -> list:
    """The values of an INSERT of ``columns``. A null binds a tombstone (it must clear the value an
    earlier run stored), but on an image's first write there is nothing to clear: nulls are left
    *unset* (native protocol v4+), which writes nothing. With ~26 of the images row's columns null
    for a photo without EXIF, every first write left ~26 tombstones, which every scan of the table
    then reads past (Cassandra warns at 1,000 per query and fails it at 100,000)."""
    from cassandra.query import UNSET_VALUE

    values = [row.get(c) for c in columns]
    return [UNSET_VALUE if v is None else v for v in values] if first_write else values


#: An image as the join finds it stored: enough to version the next write, refuse another user's id and
#: know whether this run's ``images.analyzed`` event was already delivered.
class StoredImage(NamedTuple):
    run_id: str
    version: int
    user_id: str
    notified_run: str | None
    uploaded_at: Any = None  # datetime of the stored run's upload


ANALYSIS_COLUMNS = ["image_id", "run_id", "analysis_version", "status", "stage_status", "stage_ms", "stage_errors",
                    "stage_models", "stage_records", "result_json", "uploaded_at", "completed_at"]


def replication_map(replication: int, strategy: dict | None = None) -> str:
    """The keyspace's replication as a CQL map: SimpleStrategy with ``replication`` copies, or ``strategy``
    as given (e.g. NetworkTopologyStrategy with a factor per data centre)."""
    if not strategy:
        return f"{{'class': 'SimpleStrategy', 'replication_factor': {int(replication)}}}"
    items = []
    for key, value in strategy.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(key)) or not re.fullmatch(r"[A-Za-z0-9_.-]+", str(value)):
            raise ValueError(f"bad replication entry {key!r}: {value!r}")
        items.append(f"'{key}': " + (str(value) if isinstance(value, int) else f"'{value}'"))
    return "{" + ", ".join(items) + "}"


def cql_statements(keyspace: str, replication: int, strategy: dict | None = None) -> list[str]:
    """The CQL schema with its placeholders filled, split into statements."""
    text = (resources.files("lensflow.schemas") / "cassandra.cql").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("--"))
    text = text.format(keyspace=keyspace, replication=replication_map(replication, strategy))
    return [s.strip() for s in text.split(";") if s.strip()]


def connect_cassandra(hosts: list[str], port: int, timeout: float = 10.0, **options):
    """A cluster and session; ``options``: auth provider and TLS (``security.cassandra_options``)."""
    from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
    from cassandra.policies import ExponentialReconnectionPolicy, RoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=timeout)
    # reconnect within 10 s of a node coming back (the driver's default backs off to 10 minutes, which
    # would keep the join waiting long after an outage ended)
    cluster = Cluster(hosts, port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile}, protocol_version=5,
                      connect_timeout=timeout, reconnection_policy=ExponentialReconnectionPolicy(0.5, 10.0), **options)
    return cluster, cluster.connect()


def _aio(response_future) -> asyncio.Future:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def ok(rows):
        loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(rows))

    def err(exc):
        loop.call_soon_threadsafe(lambda: fut.done() or fut.set_exception(exc))

    response_future.add_callbacks(ok, err)
    return fut


class CassandraStore:
    """Every CQL statement of lensflow (prepared once), awaited from asyncio or run synchronously."""

    def __init__(self, hosts: list[str], port: int, keyspace: str, session=None, **options):
        if session is None:
            self.cluster, self.session = connect_cassandra(hosts, port, **options)
        else:
            self.cluster, self.session = None, session
        ks = keyspace
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ks):
            raise ValueError(f"bad keyspace name {ks!r}")
        self.keyspace = ks
        p = lambda cql: self.session.prepare(cql.format(ks=ks))  # noqa: E731  (fully qualified names)
        self.insert_image = p(f"INSERT INTO {ks}.images ({', '.join(IMAGE_COLUMNS)}) VALUES ({', '.join('?' * len(IMAGE_COLUMNS))})")
        self.insert_analysis = p(f"INSERT INTO {ks}.analysis_results ({', '.join(ANALYSIS_COLUMNS)}) VALUES ({', '.join('?' * len(ANALYSIS_COLUMNS))})")
        self.insert_by_user = p("INSERT INTO {ks}.images_by_user (user_id, image_id, run_id, analysis_version) VALUES (?, ?, ?, ?)")
        self.select_tags = p("SELECT kind, tag FROM {ks}.image_tags WHERE image_id = ?")
        self.select_tags_scored = p("SELECT kind, tag, score FROM {ks}.image_tags WHERE image_id = ?")
        self.insert_tag = p("INSERT INTO {ks}.image_tags (image_id, kind, tag, score) VALUES (?, ?, ?, ?)")
        self.delete_tag = p("DELETE FROM {ks}.image_tags WHERE image_id = ? AND kind = ? AND tag = ?")
        self.insert_user_tag = p("INSERT INTO {ks}.user_images_by_tag (user_id, tag, image_id, kind, score, taken_at) VALUES (?, ?, ?, ?, ?, ?)")
        self.delete_user_tag = p("DELETE FROM {ks}.user_images_by_tag WHERE user_id = ? AND tag = ? AND image_id = ?")
        self.select_user_tag = p("SELECT image_id, kind, score, taken_at FROM {ks}.user_images_by_tag WHERE user_id = ? AND tag = ?")
        self.select_current = p("SELECT run_id, analysis_version, user_id, notified_run, uploaded_at FROM {ks}.images WHERE image_id = ?")
        self.select_run = p("SELECT stage_records, analysis_version FROM {ks}.analysis_results WHERE image_id = ? AND run_id = ?")
        self.select_run_stages = p("SELECT stage_status, stage_ms, stage_errors, stage_models, completed_at, result_json "
                                   "FROM {ks}.analysis_results WHERE image_id = ? AND run_id = ?")
        self.select_image = p("SELECT * FROM {ks}.images WHERE image_id = ?")
        self.select_rows = p("SELECT image_id, user_id, caption, uri, gps_lat, gps_lon, taken_at, nsfw_score FROM {ks}.images WHERE image_id IN ?")
        self.select_by_user = p("SELECT image_id, run_id, analysis_version FROM {ks}.images_by_user WHERE user_id = ?")
        self.select_all = p("SELECT image_id, user_id, run_id, analysis_version FROM {ks}.images")
        self.insert_by_sha = p("INSERT INTO {ks}.images_by_sha (user_id, sha256, image_id) VALUES (?, ?, ?)")
        self.select_by_sha = p("SELECT image_id FROM {ks}.images_by_sha WHERE user_id = ? AND sha256 = ?")
        self.update_notified = p("UPDATE {ks}.images SET notified_run = ? WHERE image_id = ?")

    # --- the join ---------------------------------------------------------------------------------
    async def current(self, image_id: str) -> StoredImage | None:
        """The stored image's run, version, owner and notified run, or None."""
        rows = await _aio(self.session.execute_async(self.select_current, (image_id,)))
        for row in rows:
            return StoredImage(row.run_id, row.analysis_version or 0, row.user_id, row.notified_run, row.uploaded_at)
        return None

    async def stage_records(self, image_id: str, run_id: str) -> dict[str, bytes]:
        rows = await _aio(self.session.execute_async(self.select_run, (image_id, run_id)))
        for row in rows:
            return dict(row.stage_records or {})
        return {}

    async def write(self, image_row: dict, analysis_row: dict, tags: list[dict], first_write: bool = False) -> None:
        """Upsert the image row, its analysis run, and replace its tags (both tag tables)."""
        image_id, user_id = image_row["image_id"], image_row["user_id"]
        check_vectors({"visual": image_row.get("visual")})
        old = set() if first_write else {
            (r.kind, r.tag) for r in await _aio(self.session.execute_async(self.select_tags, (image_id,)))}
        new = {(t["kind"], t["tag"]): t for t in tags}
        ex = self.session.execute_async
        futures = [
            ex(self.insert_image, bind_values(image_row, IMAGE_COLUMNS, first_write)),
            ex(self.insert_analysis, bind_values(analysis_row, ANALYSIS_COLUMNS, first_write)),
            ex(self.insert_by_user, (user_id, image_id, image_row.get("run_id"), image_row.get("analysis_version"))),
        ]
        if image_row.get("sha256"):
            futures.append(ex(self.insert_by_sha, (user_id, image_row["sha256"], image_id)))
        for kind, tag in old - set(new):
            futures.append(ex(self.delete_tag, (image_id, kind, tag)))
            futures.append(ex(self.delete_user_tag, (user_id, tag, image_id)))
        for (kind, tag), t in new.items():
            futures.append(ex(self.insert_tag, (image_id, kind, tag, float(t.get("score", 1.0)))))
            futures.append(ex(self.insert_user_tag, (user_id, tag, image_id, kind, float(t.get("score", 1.0)), image_row.get("taken_at"))))
        await _gather_first_error(_aio(f) for f in futures)

    async def same_bytes(self, user_id: str, sha256: str) -> list[str]:
        """The user's images whose original has this SHA-256."""
        return [r.image_id for r in await _aio(self.session.execute_async(self.select_by_sha, (user_id, sha256)))]

    async def mark_notified(self, image_id: str, run_id: str) -> None:
        """Record that ``run_id``'s images.analyzed event is on the broker (a redelivery then skips it)."""
        await _aio(self.session.execute_async(self.update_notified, (run_id, image_id)))

    # --- search, show, reanalyze (synchronous: the CLI and the web views) ------------------------------
    def images_tagged(self, user_id: str, tag: str) -> list:
        return list(self.session.execute(self.select_user_tag, (user_id, tag)))

    def rows(self, image_ids: list[str]) -> dict[str, Any]:
        """image_id -> (user_id, caption, uri, gps, taken_at) row, in one query per 100 ids."""
        out: dict[str, Any] = {}
        ids = list(dict.fromkeys(image_ids))
        for i in range(0, len(ids), 100):
            for row in self.session.execute(self.select_rows, (ids[i:i + 100],)):
                out[row.image_id] = row
        return out

    def image(self, image_id: str) -> dict | None:
        """The stored image row, its tags and its current run's per-stage outcome (for `show`)."""
        row = self.session.execute(self.select_image, (image_id,)).one()
        if row is None:
            return None
        image = {k: v for k, v in row._asdict().items() if k != "visual"}
        image["has_visual_vector"] = row.visual is not None
        image["tags"] = [{"kind": t.kind, "tag": t.tag, "score": t.score}
                         for t in self.session.execute(self.select_tags_scored, (image_id,))]
        run = self.session.execute(self.select_run_stages, (image_id, row.run_id)).one()
        if run is not None:
            image["stages"] = {stage: {"status": status, "ms": round((run.stage_ms or {}).get(stage, 0.0), 2),
                                       "error": (run.stage_errors or {}).get(stage), "model": (run.stage_models or {}).get(stage)}
                               for stage, status in (run.stage_status or {}).items()}
            image["aggregate"] = json.loads(run.result_json) if run.result_json else None
        return image

    def images_of(self, user_id: str | None) -> list:
        """(image_id, user_id, run_id, analysis_version) of a user's images; every image without a user
        (a paged scan of ``images``)."""
        if user_id is None:
            return list(self.session.execute(self.select_all))
        return [SimpleRow(r.image_id, user_id, r.run_id, r.analysis_version)
                for r in self.session.execute(self.select_by_user, (user_id,))]

    def stored_records(self, image_id: str, run_id: str) -> dict[str, bytes]:
        row = self.session.execute(self.select_run, (image_id, run_id)).one()
        return dict(row.stage_records or {}) if row else {}

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()


class SimpleRow(NamedTuple):
    image_id: str
    user_id: str
    run_id: str
    analysis_version: int


async def _gather_first_error(aws) -> None:
    """Await every write; raise the first error only after all have finished (none left running)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


def qdrant_client(url: str | None, path, api_key: str | None = None):
    from qdrant_client import QdrantClient

    if url:
        return QdrantClient(url=url, api_key=api_key, timeout=30)
    path.mkdir(parents=True, exist_ok=True)
    try:
        return QdrantClient(path=str(path))
    except RuntimeError as exc:
        if "already accessed" in str(exc):
            raise RuntimeError(f"Qdrant local storage {path} is in use by another process (a running worker owns it; "
                               "stop it, or set LENSFLOW_QDRANT_URL to use a server)") from None
        raise


def ensure_collections(client) -> None:
    from qdrant_client import models as m

    if not client.collection_exists("images"):
        client.create_collection("images", vectors_config={
            name: m.VectorParams(size=dim, distance=m.Distance.COSINE) for name, dim in IMAGE_VECTORS.items()})
    if not client.collection_exists("faces"):
        client.create_collection("faces", vectors_config=m.VectorParams(size=FACE_DIM, distance=m.Distance.EUCLID))
    if getattr(client, "_client", None).__class__.__name__ != "QdrantLocal":  # indexes only matter on a server
        for collection, field in [("images", "user_id"), ("faces", "user_id"), ("faces", "image_id")]:
            client.create_payload_index(collection, field, m.PayloadSchemaType.KEYWORD)
        client.create_payload_index("images", "nsfw_score", m.PayloadSchemaType.FLOAT)  # search --safe
        client.create_payload_index("images", "keywords", m.TextIndexParams(  # search --text, keyword half
            type=m.TextIndexType.TEXT, tokenizer=m.TokenizerType.WORD, lowercase=True, min_token_len=2))


class QdrantStore:
    """Qdrant behind one dedicated thread (local mode is synchronous and not thread-safe)."""

    def __init__(self, url: str | None, path, api_key: str | None = None):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant")
        self.client = self._pool.submit(qdrant_client, url, path, api_key).result()
        self._pool.submit(ensure_collections, self.client).result()

    async def upsert_images(self, points: list[dict]) -> None:
        from qdrant_client import models as m

        for p in points:
            check_vectors(p["vectors"])
        structs = [m.PointStruct(id=p["id"], vector=p["vectors"], payload=p["payload"]) for p in points]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, lambda: self.client.upsert("images", points=structs, wait=True))

    async def near_duplicates(self, user_id: str, visual: list[float], threshold: float, exclude: str,
                              limit: int = 10) -> list[tuple[str, float]]:
        """(image id, cosine similarity) of the user's other images whose visual vector is at least
        ``threshold`` similar to ``visual``, most similar first."""
        from qdrant_client import models as m

        flt = m.Filter(must=[m.FieldCondition(key="user_id", match=m.MatchValue(value=user_id))],
                       must_not=[m.HasIdCondition(has_id=[point_id(exclude)])])
        hits = await self.call(lambda c: c.query_points("images", query=visual, using="visual", query_filter=flt,
                                                        score_threshold=threshold, limit=limit, with_payload=["image_id"]).points)
        return [(h.payload["image_id"], round(float(h.score), 4)) for h in hits]

    def image_vector(self, image_id: str, vector_name: str):
        """(payload, vector) of an image's point, or None."""
        pts = self.run(lambda c: c.retrieve("images", [point_id(image_id)], with_vectors=[vector_name], with_payload=True))
        if not pts:
            return None
        return pts[0].payload, (pts[0].vector or {}).get(vector_name)

    def nearest(self, vector_name: str, vector: list[float], query_filter, limit: int) -> list:
        return self.run(lambda c: c.query_points("images", query=vector, using=vector_name, query_filter=query_filter,
                                                 limit=limit, with_payload=True).points)

    def keyword_matches(self, words: list[str], query_filter, limit: int) -> list:
        """Points whose ``keywords`` hold any of ``words`` (Qdrant full-text match; the caller checks
        whole words: local mode matches substrings)."""
        from qdrant_client import models as m

        flt = m.Filter(must=query_filter.must, must_not=query_filter.must_not,
                       should=[m.FieldCondition(key="keywords", match=m.MatchText(text=w)) for w in words])
        return self.run(lambda c: c.scroll("images", scroll_filter=flt, limit=limit, with_payload=True)[0])

    def run(self, fn, *args: Any):
        """Run a client call on the Qdrant thread, blocking (for code already off the event loop)."""
        return self._pool.submit(fn, self.client, *args).result()

    async def call(self, fn, *args: Any):
        """Run ``fn(client, *args)`` on the Qdrant thread, awaited from the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, self.client, *args)

    def close(self) -> None:
        try:
            self._pool.submit(self.client.close).result(timeout=10)
        except Exception:
            pass
        self._pool.shutdown(wait=False)


def wait_for_cassandra(hosts: list[str], port: int, timeout_s: float, **options) -> None:
    """Block until a CQL query answers, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            cluster, session = connect_cassandra(hosts, port, timeout=5, **options)
            try:
                session.execute("SELECT release_version FROM system.local")
                return
            finally:
                cluster.shutdown()
        except Exception as exc:
            last = exc
            time.sleep(2)
    raise TimeoutError(f"Cassandra at {hosts}:{port} did not answer within {timeout_s:.0f}s ({last})")
