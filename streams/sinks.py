"""The stores: Cassandra (rows) and Qdrant (vectors). Every write is an idempotent upsert keyed by
image id (and run id), so at-least-once delivery never duplicates a row or a point.

Cassandra: cassandra-driver with prepared statements, awaited from asyncio through the driver's
callbacks (the event loop never blocks on a query). Qdrant: a server when ``LENSFLOW_QDRANT_URL``
is set, else qdrant-client local mode in ``DATA_DIR/qdrant``; local mode locks its folder to one
process, so locally only the worker that runs the join opens it, and its calls run in one dedicated
thread (the local client is synchronous and not thread-safe).
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import structlog

log = structlog.get_logger("lensflow.sinks")

#: Named vectors of the Qdrant ``images`` collection (name -> dimension).
IMAGE_VECTORS = {"visual": 1280, "semantic": 384}
FACE_DIM = 128

IMAGE_COLUMNS = [
    "image_id", "user_id", "source_uri", "uri", "format", "mime_type", "size_bytes", "sha256", "width", "height",
    "original_width", "original_height", "orientation", "taken_at", "taken_at_local", "tz_offset", "camera_make",
    "camera_model", "lens_make", "lens_model", "exposure_time_s", "f_number", "iso", "focal_length_mm", "gps_lat",
    "gps_lon", "gps_alt_m", "caption", "scene", "visual", "status", "error_code", "error_message", "run_id",
    "analysis_version", "uploaded_at", "last_analyzed",
]
ANALYSIS_COLUMNS = ["image_id", "run_id", "analysis_version", "status", "stage_status", "stage_ms", "stage_errors",
                    "stage_models", "stage_records", "result_json", "uploaded_at", "completed_at"]


def cql_statements(keyspace: str, replication: int) -> list[str]:
    """The CQL schema with its placeholders filled, split into statements."""
    text = (resources.files("lensflow.schemas") / "cassandra.cql").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.strip().startswith("--"))
    text = text.format(keyspace=keyspace, replication=replication)
    return [s.strip() for s in text.split(";") if s.strip()]


def connect_cassandra(hosts: list[str], port: int, timeout: float = 10.0):
    from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
    from cassandra.policies import RoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=timeout)
    cluster = Cluster(hosts, port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile}, protocol_version=5,
                      connect_timeout=timeout)
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


class CassandraSink:
    def __init__(self, hosts: list[str], port: int, keyspace: str):
        self.cluster, self.session = connect_cassandra(hosts, port)
        ks = keyspace
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ks):
            raise ValueError(f"bad keyspace name {ks!r}")
        p = lambda cql: self.session.prepare(cql.format(ks=ks))  # noqa: E731  (fully qualified names)
        self.insert_image = p(f"INSERT INTO {ks}.images ({', '.join(IMAGE_COLUMNS)}) VALUES ({', '.join('?' * len(IMAGE_COLUMNS))})")
        self.insert_analysis = p(f"INSERT INTO {ks}.analysis_results ({', '.join(ANALYSIS_COLUMNS)}) VALUES ({', '.join('?' * len(ANALYSIS_COLUMNS))})")
        self.select_tags = p("SELECT kind, tag FROM {ks}.image_tags WHERE image_id = ?")
        self.insert_tag = p("INSERT INTO {ks}.image_tags (image_id, kind, tag, score) VALUES (?, ?, ?, ?)")
        self.delete_tag = p("DELETE FROM {ks}.image_tags WHERE image_id = ? AND kind = ? AND tag = ?")
        self.insert_user_tag = p("INSERT INTO {ks}.user_images_by_tag (user_id, tag, image_id, kind, score, taken_at) VALUES (?, ?, ?, ?, ?, ?)")
        self.delete_user_tag = p("DELETE FROM {ks}.user_images_by_tag WHERE user_id = ? AND tag = ? AND image_id = ?")
        self.select_current = p("SELECT run_id, analysis_version, user_id FROM {ks}.images WHERE image_id = ?")
        self.select_run = p("SELECT stage_records, analysis_version FROM {ks}.analysis_results WHERE image_id = ? AND run_id = ?")

    async def current(self, image_id: str) -> tuple[str, int, str] | None:
        """(run_id, analysis_version, user_id) of the stored image, or None."""
        rows = await _aio(self.session.execute_async(self.select_current, (image_id,)))
        for row in rows:
            return row.run_id, row.analysis_version or 0, row.user_id
        return None

    async def stage_records(self, image_id: str, run_id: str) -> dict[str, bytes]:
        rows = await _aio(self.session.execute_async(self.select_run, (image_id, run_id)))
        for row in rows:
            return dict(row.stage_records or {})
        return {}

    async def write(self, image_row: dict, analysis_row: dict, tags: list[dict], first_write: bool = False) -> None:
        """Upsert the image row, its analysis run, and replace its tags (both tag tables)."""
        image_id, user_id = image_row["image_id"], image_row["user_id"]
        old = set() if first_write else {
            (r.kind, r.tag) for r in await _aio(self.session.execute_async(self.select_tags, (image_id,)))}
        new = {(t["kind"], t["tag"]): t for t in tags}
        ex = self.session.execute_async
        futures = [
            ex(self.insert_image, [image_row.get(c) for c in IMAGE_COLUMNS]),
            ex(self.insert_analysis, [analysis_row.get(c) for c in ANALYSIS_COLUMNS]),
        ]
        for kind, tag in old - set(new):
            futures.append(ex(self.delete_tag, (image_id, kind, tag)))
            futures.append(ex(self.delete_user_tag, (user_id, tag, image_id)))
        for (kind, tag), t in new.items():
            futures.append(ex(self.insert_tag, (image_id, kind, tag, float(t.get("score", 1.0)))))
            futures.append(ex(self.insert_user_tag, (user_id, tag, image_id, kind, float(t.get("score", 1.0)), image_row.get("taken_at"))))
        await asyncio.gather(*(_aio(f) for f in futures))

    def close(self) -> None:
        self.cluster.shutdown()


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


class QdrantSink:
    def __init__(self, url: str | None, path, api_key: str | None = None):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant")
        self.client = self._pool.submit(qdrant_client, url, path, api_key).result()
        self._pool.submit(ensure_collections, self.client).result()

    async def upsert_images(self, points: list[dict]) -> None:
        from qdrant_client import models as m

        structs = [m.PointStruct(id=p["id"], vector=p["vectors"], payload=p["payload"]) for p in points]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, lambda: self.client.upsert("images", points=structs, wait=True))

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


def wait_for_cassandra(hosts: list[str], port: int, timeout_s: float) -> None:
    """Block until a CQL query answers, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            cluster, session = connect_cassandra(hosts, port, timeout=5)
            try:
                session.execute("SELECT release_version FROM system.local")
                return
            finally:
                cluster.shutdown()
        except Exception as exc:
            last = exc
            time.sleep(2)
    raise TimeoutError(f"Cassandra at {hosts}:{port} did not answer within {timeout_s:.0f}s ({last})")
