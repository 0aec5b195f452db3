"""The store layer: every CQL statement lensflow runs and every call on Qdrant's ``images``
collection, in one module (the join's writes and reads, search, `show`, `reanalyze`). Every write is
an idempotent upsert keyed by image id (and run id), so at-least-once delivery never duplicates a
row or a point. Nothing here retries: callers wrap calls in the error policy (``RetryPolicy``), which
retries transient faults and lets a store's refusal (``InvalidRequest``, a wrong vector size) fail
that image alone.

Cassandra: cassandra-driver with prepared statements, awaited from asyncio through the driver's
callbacks (the event loop never blocks on a query). What one image costs the sink (issue 19,
``bench/spine.py`` measures it, ``tests/integration/test_sink_requests.py`` pins it): the join's
read of the row (``current``: it also returns the stored tags, so a rewrite reads nothing else), the
duplicate lookup (``same_bytes``), ``write`` in two requests for up to 8 tags (one more per 10 tags, and
one more when a rewrite removes tags or changes the bytes) and ``mark_notified``; the lookups and
notifications of one event-loop turn go together (one request per user, per 10 images). Cassandra's
CPU goes less by request than by partition and row written, so the index (a partition per tag) stays
the larger part of an image's cost. ``write``'s requests, in order:

1. the index: ``user_images_by_tag`` (one partition per tag), ``images_by_user`` and ``images_by_sha``,
   as UNLOGGED batches of at most ``BATCH_PARTITIONS`` partitions; on a rewrite only the entries that
   changed;
2. the image's partition: its ``images`` row (with its tags), its ``analysis_results`` row and its
   ``image_tags`` rows, all keyed by ``image_id``: one UNLOGGED batch that Cassandra applies as one
   mutation (no batch size limit applies to it, and it is atomic);
3. on a rewrite, the index entries of tags it removed (and of a replaced SHA-256), after the row.

Why that order: the row's ``tags`` is what the index holds for the image. The index is written before
the row, and deleted from only after it, so a failure anywhere leaves a row whose tags are all in the
index; the retry (every write is an idempotent upsert or delete, retried whole) then needs only what
differs from the row. What a failure can leave is an index entry of a tag the retry no longer has
(the duplicate flags can change between attempts): ``search --tag`` may list that image for it, as
the sink's fan-out of independent requests could before.

Consistency: the join's reads of its own state (``current``, ``stage_records``) and every write of the
join are LOCAL_QUORUM, so that a worker that takes over a partition reads what another wrote (with
replication 1 this is one replica, as LOCAL_ONE); the duplicate lookup and the reads of `show`,
`search` and `reanalyze` are LOCAL_ONE. Every statement is idempotent (``is_idempotent``: the driver
may retry it on another connection).

Qdrant: a server when ``LENSFLOW_QDRANT_URL`` is set, else qdrant-client local mode in ``DATA_DIR/qdrant``; local mode locks its folder to one
process, so locally only the worker that runs the join opens it, and its calls run in one dedicated
thread (the local client is synchronous and not thread-safe).
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import timezone
from importlib import resources
from typing import Any, NamedTuple

import structlog
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import ExponentialReconnectionPolicy, RoundRobinPolicy
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType
from qdrant_client import QdrantClient
from qdrant_client import models as m

from .errors import StoreRejected, is_transient
from .records import point_id

log = structlog.get_logger("lensflow.store")

#: Named vectors of the Qdrant ``images`` collection (name -> dimension).
IMAGE_VECTORS = {"visual": 1280, "semantic": 384}
FACE_DIM = 128

def check_vectors(vectors: dict) -> None:
    """Refuse (``StoreRejected``: permanent, that image alone) a named vector of the wrong dimension
    before a store sees it."""
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
    values = [row.get(c) for c in columns]
    return [UNSET_VALUE if v is None else v for v in values] if first_write else values


#: An image as the join finds it stored: enough to version the next write, refuse another user's id and
#: know whether this run's ``images.analyzed`` event was already delivered; and for the sink, what a
#: rewrite must change (its tags, and the SHA-256 and capture time its index entries carry).
class StoredImage(NamedTuple):
    run_id: str
    version: int
    user_id: str
    notified_run: str | None
    uploaded_at: Any = None  # datetime of the stored run's upload
    sha256: str | None = None
    taken_at: Any = None
    tags: dict | None = None  # (kind, tag) -> score; None: a row whose tags were not written with it (an older writer)


#: Partitions per multi-partition UNLOGGED batch: Cassandra warns above 10
#: (``unlogged_batch_across_partitions_warn_threshold``).
BATCH_PARTITIONS = 10
#: How long the row ``current`` read serves the ``write`` of the same image that follows it (the join
#: reads and writes an image in one batch; a later write reads the row again).
KNOWN_TTL_S = 30.0
KNOWN_MAX = 4096


def f32(x) -> float:
    """``x`` as Cassandra's ``float`` stores it (a stored score compares equal to the one written)."""
    return struct.unpack("f", struct.pack("f", float(x)))[0]


def epoch_ms(value) -> int | None:
    """A timestamp as Cassandra stores it (ms since the epoch; a naive datetime is UTC, as the driver
    returns them)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


def tag_scores(tags: list[dict]) -> dict[tuple[str, str], float]:
    """(kind, tag) -> score, as stored (``images.tags``, ``image_tags``)."""
    return {(t["kind"], t["tag"]): f32(t.get("score", 1.0)) for t in tags}


def index_entries(scores: dict[tuple[str, str], float]) -> dict[str, tuple[str, float]]:
    """tag -> (kind, score) of the ``user_images_by_tag`` entries of an image: one per tag (its key is
    (user, tag, image)); a tag of two kinds keeps its highest score, then the first kind."""
    out: dict[str, tuple[str, float]] = {}
    for (kind, tag), score in sorted(scores.items()):
        if tag not in out or score > out[tag][1]:
            out[tag] = (kind, score)
    return out


class WritePlan(NamedTuple):
    """The statements of one image's write (``plan_write``), by request: ``index`` goes first, in
    batches of ``BATCH_PARTITIONS`` (each statement its own partition), ``image`` is one batch (one
    partition), ``cleanup`` goes last. Each entry: (statement name, values)."""
    index: list
    image: list
    cleanup: list

    def requests(self) -> int:
        return (-(-len(self.index) // BATCH_PARTITIONS) + (1 if self.image else 0)
                + -(-len(self.cleanup) // BATCH_PARTITIONS))


def plan_write(image_row: dict, analysis_row: dict, tags: list[dict], stored: StoredImage | None,
               old_tags: dict | None = None) -> WritePlan:
    """What ``CassandraStore.write`` sends for an image, given the stored row (None: its first write).
    ``old_tags``: the stored tags, when the row predates ``images.tags`` (read from ``image_tags``)."""
    image_id, user_id = image_row["image_id"], image_row["user_id"]
    run_id, version = image_row.get("run_id"), image_row.get("analysis_version")
    new = tag_scores(tags)
    first = stored is None
    old = {} if first else (stored.tags if stored.tags is not None else (old_tags or {}))
    # a row without trusted tags (written before images.tags existed, or rewritten by a writer that predates
    # it): what the index holds for it is not known, so every entry is written again
    trusted = not first and stored.tags is not None
    same_entry = trusted and stored.user_id == user_id and epoch_ms(stored.taken_at) == epoch_ms(image_row.get("taken_at"))
    old_index, new_index = index_entries(old), index_entries(new)

    index = [("insert_user_tag", (user_id, tag, image_id, kind, score, image_row.get("taken_at")))
             for tag, (kind, score) in new_index.items() if not (same_entry and old_index.get(tag) == (kind, score))]
    if not trusted or (stored.run_id, stored.version) != (run_id, version):
        index.append(("insert_by_user", (user_id, image_id, run_id, version)))
    sha = image_row.get("sha256")
    if sha and (not trusted or stored.sha256 != sha):
        index.append(("insert_by_sha", (user_id, sha, image_id)))

    # a rewrite binds the row's nulls: they clear what an earlier run stored (knowing which columns that
    # run left null would take reading them all, for every image); an analysis_results row of a run not
    # stored before is a first write of that row
    new_run = first or stored.run_id != analysis_row.get("run_id")
    image = [("insert_image", bind_values({**image_row, "tags": new}, IMAGE_ROW_COLUMNS, first)),
             ("insert_analysis", bind_values(analysis_row, ANALYSIS_COLUMNS, new_run))]
    image += [("insert_tag", (image_id, kind, tag, score)) for (kind, tag), score in new.items() if old.get((kind, tag)) != score]
    image += [("delete_tag", (image_id, kind, tag)) for kind, tag in old if (kind, tag) not in new]

    cleanup = [("delete_user_tag", (stored.user_id, tag, image_id)) for tag in old_index if tag not in new_index]
    if not first and stored.sha256 and sha and stored.sha256 != sha:
        cleanup.append(("delete_by_sha", (stored.user_id, stored.sha256, image_id)))
    return WritePlan(index, image, cleanup)


#: The columns the sink writes to an images row: the image's, and its tags.
IMAGE_ROW_COLUMNS = IMAGE_COLUMNS + ["tags"]
#: What ``current`` reads of the row (each column read costs Cassandra CPU, on every image: reading all
#: ~50 took 0.15 ms a read against 0.09 for these, measured on the local stack).
CURRENT_COLUMNS = ["run_id", "analysis_version", "user_id", "notified_run", "uploaded_at", "sha256", "taken_at", "tags"]

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
        quorum, one = ConsistencyLevel.LOCAL_QUORUM, ConsistencyLevel.LOCAL_ONE
        self.write_consistency = quorum

        def p(cql: str, consistency=one):
            """A prepared statement (fully qualified names) with its consistency level; every statement of
            lensflow is idempotent (upserts, deletes and reads of given keys: no counters, appends or LWTs)."""
            statement = self.session.prepare(cql.format(ks=ks))
            statement.consistency_level = consistency
            statement.is_idempotent = True
            return statement

        # the join's writes (LOCAL_QUORUM: what current() reads back)
        w = quorum
        self.insert_image = p(f"INSERT INTO {ks}.images ({', '.join(IMAGE_ROW_COLUMNS)}) VALUES ({', '.join('?' * len(IMAGE_ROW_COLUMNS))})", w)
        self.insert_analysis = p(f"INSERT INTO {ks}.analysis_results ({', '.join(ANALYSIS_COLUMNS)}) VALUES ({', '.join('?' * len(ANALYSIS_COLUMNS))})", w)
        self.insert_by_user = p("INSERT INTO {ks}.images_by_user (user_id, image_id, run_id, analysis_version) VALUES (?, ?, ?, ?)", w)
        self.insert_tag = p("INSERT INTO {ks}.image_tags (image_id, kind, tag, score) VALUES (?, ?, ?, ?)", w)
        self.delete_tag = p("DELETE FROM {ks}.image_tags WHERE image_id = ? AND kind = ? AND tag = ?", w)
        self.insert_user_tag = p("INSERT INTO {ks}.user_images_by_tag (user_id, tag, image_id, kind, score, taken_at) VALUES (?, ?, ?, ?, ?, ?)", w)
        self.delete_user_tag = p("DELETE FROM {ks}.user_images_by_tag WHERE user_id = ? AND tag = ? AND image_id = ?", w)
        self.insert_by_sha = p("INSERT INTO {ks}.images_by_sha (user_id, sha256, image_id) VALUES (?, ?, ?)", w)
        self.delete_by_sha = p("DELETE FROM {ks}.images_by_sha WHERE user_id = ? AND sha256 = ? AND image_id = ?", w)
        self.update_notified = p("UPDATE {ks}.images SET notified_run = ? WHERE image_id = ?", w)
        # the join's reads of its own state (LOCAL_QUORUM: read-your-writes with the writes above)
        current = (f"SELECT image_id, {', '.join(CURRENT_COLUMNS)}, WRITETIME(tags) AS tags_written, "
                   f"WRITETIME(run_id) AS row_written FROM {ks}.images")
        self.select_current = p(current + " WHERE image_id = ?", quorum)
        self.select_current_many = p(current + " WHERE image_id IN ?", quorum)
        self.select_run = p("SELECT stage_records, analysis_version FROM {ks}.analysis_results WHERE image_id = ? AND run_id = ?", quorum)
        self.select_tags_scored = p("SELECT kind, tag, score FROM {ks}.image_tags WHERE image_id = ?", quorum)
        # the duplicate lookup (a flag, best effort) and the reads of show, search and reanalyze: LOCAL_ONE
        self.select_by_sha = p("SELECT image_id FROM {ks}.images_by_sha WHERE user_id = ? AND sha256 = ?")
        self.select_by_sha_many = p("SELECT sha256, image_id FROM {ks}.images_by_sha WHERE user_id = ? AND sha256 IN ?")
        self.select_user_tag = p("SELECT image_id, kind, score, taken_at FROM {ks}.user_images_by_tag WHERE user_id = ? AND tag = ?")
        self.select_run_stages = p("SELECT stage_status, stage_ms, stage_errors, stage_models, completed_at, result_json "
                                   "FROM {ks}.analysis_results WHERE image_id = ? AND run_id = ?")
        self.select_image = p("SELECT * FROM {ks}.images WHERE image_id = ?")
        self.select_rows = p("SELECT image_id, user_id, caption, uri, gps_lat, gps_lon, taken_at, nsfw_score FROM {ks}.images WHERE image_id IN ?")
        self.select_by_user = p("SELECT image_id, run_id, analysis_version FROM {ks}.images_by_user WHERE user_id = ?")
        self.select_user_page = p("SELECT image_id FROM {ks}.images_by_user WHERE user_id = ? AND image_id > ? LIMIT ?")
        self.select_all = p("SELECT image_id, user_id, run_id, analysis_version FROM {ks}.images")
        #: image_id -> (monotonic time, StoredImage) of the rows current() read, for the write that follows
        self._known: OrderedDict[str, tuple[float, StoredImage]] = OrderedDict()
        self._notify = _Coalescer(self._send_notified)
        self._by_sha = _Coalescer(self._send_same_bytes)

    # --- the join ---------------------------------------------------------------------------------
    def _stored(self, row, remember: bool = True) -> StoredImage:
        # the tags are what the index holds only if written with the row: a writer that predates images.tags
        # (a rolling upgrade) rewrites the row and image_tags and leaves them behind
        trusted = row.tags is not None and row.tags_written == row.row_written
        stored = StoredImage(row.run_id, row.analysis_version or 0, row.user_id, row.notified_run, row.uploaded_at,
                             row.sha256, row.taken_at, dict(row.tags) if trusted else None)
        if remember:
            self._known[row.image_id] = (time.monotonic(), stored)
            self._known.move_to_end(row.image_id)
            while len(self._known) > KNOWN_MAX:
                self._known.popitem(last=False)
        return stored

    async def current(self, image_id: str) -> StoredImage | None:
        """The stored image's run, version, owner and notified run, or None. The row it read also
        serves the ``write`` of this image that follows (within ``KNOWN_TTL_S``)."""
        rows = await _aio(self.session.execute_async(self.select_current, (image_id,)))
        for row in rows:
            return self._stored(row)
        self._known.pop(image_id, None)
        return None

    async def current_many(self, image_ids: list[str]) -> dict[str, StoredImage]:
        """``current`` of several images in one request per 100 ids: image_id -> StoredImage of those stored."""
        ids = list(dict.fromkeys(image_ids))
        pages = await asyncio.gather(*(_aio(self.session.execute_async(self.select_current_many, (ids[i:i + 100],)))
                                       for i in range(0, len(ids), 100)))
        out = {row.image_id: self._stored(row) for rows in pages for row in rows}
        for image_id in ids:
            if image_id not in out:
                self._known.pop(image_id, None)
        return out

    async def stored_for_write(self, image_id: str) -> StoredImage | None:
        """The stored row a rewrite starts from: the one ``current`` just read, else read now."""
        known = self._known.pop(image_id, None)
        if known is not None and time.monotonic() - known[0] < KNOWN_TTL_S:
            return known[1]
        rows = await _aio(self.session.execute_async(self.select_current, (image_id,)))
        for row in rows:
            return self._stored(row, remember=False)
        return None

    async def stage_records(self, image_id: str, run_id: str) -> dict[str, bytes]:
        rows = await _aio(self.session.execute_async(self.select_run, (image_id, run_id)))
        for row in rows:
            return dict(row.stage_records or {})
        return {}

    async def write(self, image_row: dict, analysis_row: dict, tags: list[dict], first_write: bool = False) -> None:
        """Upsert the image row, its analysis run, and replace its tags (``image_tags`` and the
        ``user_images_by_tag`` index): the requests of ``plan_write``, in order (module docstring)."""
        image_id = image_row["image_id"]
        check_vectors({"visual": image_row.get("visual")})
        stored = None if first_write else await self.stored_for_write(image_id)
        old_tags = None
        if stored is not None and stored.tags is None:  # a row from before images.tags: its tags are in image_tags
            rows = await _aio(self.session.execute_async(self.select_tags_scored, (image_id,)))
            old_tags = {(r.kind, r.tag): f32(r.score if r.score is not None else 1.0) for r in rows}
        plan = plan_write(image_row, analysis_row, tags, stored, old_tags)
        self._known.pop(image_id, None)
        await self._send_each(plan.index)
        await _aio(self.session.execute_async(self._batch(plan.image)))
        await self._send_each(plan.cleanup)

    def _batch(self, ops: list):
        """One request of ``ops`` ((statement name, values)): the statement alone, or an UNLOGGED batch."""
        if len(ops) == 1:
            name, values = ops[0]
            return getattr(self, name).bind(values)
        batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=self.write_consistency)
        batch.is_idempotent = True
        for name, values in ops:
            batch.add(getattr(self, name), values)
        return batch

    async def _send_each(self, ops: list) -> None:
        """``ops``, each on its own partition, in batches of ``BATCH_PARTITIONS``, all at once."""
        if ops:
            await _gather_first_error(_aio(self.session.execute_async(self._batch(ops[i:i + BATCH_PARTITIONS])))
                                      for i in range(0, len(ops), BATCH_PARTITIONS))

    async def same_bytes(self, user_id: str, sha256: str) -> list[str]:
        """The user's images whose original has this SHA-256 (the lookups of one event-loop turn go
        together: one request per user and 100 hashes)."""
        return await self._by_sha.add((user_id, sha256))

    async def _send_same_bytes(self, keys: list[tuple[str, str]]) -> list:
        by_user: dict[str, list[str]] = {}
        for user_id, sha in keys:
            by_user.setdefault(user_id, [])
            if sha not in by_user[user_id]:
                by_user[user_id].append(sha)
        requests = [(user_id, shas[i:i + 100]) for user_id, shas in by_user.items() for i in range(0, len(shas), 100)]

        async def one(user_id, shas):
            if len(shas) == 1:
                rows = await _aio(self.session.execute_async(self.select_by_sha, (user_id, shas[0])))
                return {(user_id, shas[0]): [r.image_id for r in rows]}
            rows = await _aio(self.session.execute_async(self.select_by_sha_many, (user_id, shas)))
            found: dict = {(user_id, sha): [] for sha in shas}
            for r in rows:
                found[(user_id, r.sha256)].append(r.image_id)
            return found

        results = await asyncio.gather(*(one(u, shas) for u, shas in requests), return_exceptions=True)
        answers: dict = {}
        for (user_id, shas), r in zip(requests, results):
            for sha in shas:
                answers[(user_id, sha)] = r if isinstance(r, BaseException) else r[(user_id, sha)]
        return [answers[k] if isinstance(answers[k], BaseException) else list(answers[k]) for k in keys]

    async def mark_notified(self, image_id: str, run_id: str) -> None:
        """Record that ``run_id``'s images.analyzed event is on the broker (a redelivery then skips it).
        The notifications of one event-loop turn go together (UNLOGGED batches of ``BATCH_PARTITIONS``
        images; a batch Cassandra refuses is sent again statement by statement, so that only the image at
        fault fails)."""
        await self._notify.add((image_id, run_id))

    async def _send_notified(self, items: list[tuple[str, str]]) -> list:
        async def chunk(part):
            try:
                await _aio(self.session.execute_async(self._batch([("update_notified", (run_id, image_id)) for image_id, run_id in part])))
                return [None] * len(part)
            except Exception as exc:
                if len(part) == 1 or is_transient(exc):
                    return [exc] * len(part)
            return await asyncio.gather(*(_aio(self.session.execute_async(self.update_notified, (run_id, image_id)))
                                          for image_id, run_id in part), return_exceptions=True)

        parts = [items[i:i + BATCH_PARTITIONS] for i in range(0, len(items), BATCH_PARTITIONS)]
        return [r for results in await asyncio.gather(*(chunk(part) for part in parts)) for r in results]

    # --- search, show, reanalyze (synchronous: the CLI and the web views) ------------------------------
    def images_tagged(self, user_id: str, tag: str):
        """The user's index rows of ``tag``, as the driver pages them in (iterate once: a tag on many
        images is never held in memory whole; ``search`` keeps only the newest it answers)."""
        return self.session.execute(self.select_user_tag, (user_id, tag))

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
        if getattr(row, "tags", None) is not None:  # the row's own tags, in image_tags' order (kind, tag)
            image["tags"] = [{"kind": kind, "tag": tag, "score": score} for (kind, tag), score in sorted(row.tags.items())]
        else:  # a row written before images.tags existed
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

    def image_ids_page(self, user_id: str, after: str, limit: int) -> list[str]:
        """A user's image ids in id order, after ``after`` ("" for the first page): the read service's list."""
        return [r.image_id for r in self.session.execute(self.select_user_page, (user_id, after, limit))]

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


class _Coalescer:
    """Calls made in one event-loop turn, sent together: ``add(item)`` returns an awaitable of that
    item's result; at the end of the turn ``send(items)`` answers them all (a list of results or
    exceptions, one per item). The join gathers its lookups and notifications of a batch, so they arrive
    in one turn."""

    def __init__(self, send):
        self._send = send
        self._pending: list = []
        self._loop = None
        self._tasks: set = set()

    def add(self, item) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._pending = loop, []
        fut = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((item, fut))
        return fut

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            task = asyncio.ensure_future(self._answer(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, pending: list) -> None:
        try:
            results = await self._send([item for item, _ in pending])
        except asyncio.CancelledError:
            for _, fut in pending:
                fut.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 (each caller gets it)
            results = [exc] * len(pending)
        for (_, fut), result in zip(pending, results):
            if fut.done():  # the caller was cancelled
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)


async def _gather_first_error(aws) -> None:
    """Await every write; raise the first error only after all have finished (none left running)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


def qdrant_client(url: str | None, path, api_key: str | None = None):
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


def local_commits_without_sync(client) -> bool:
    """Local mode only: let its SQLite files commit to a write-ahead log without an fsync per point
    (``journal_mode=WAL``, ``synchronous=NORMAL``). qdrant-client commits each point on its own, and with
    SQLite's defaults each commit waits for the disk: ~1 ms a point alone, 3-4 ms an image in the join
    under load (``bench/spine.py``), spent while the join waits (against 0.09 ms). A commit still
    survives the process (kill -9 included); what an OS crash or power loss can take back is the last
    commits, as the local Cassandra's periodic commit log sync (10 s) can. Returns whether it applied
    (a server, or a client whose internals differ, is left as it is)."""
    local = getattr(client, "_client", None)
    collections = getattr(local, "collections", None)
    if local.__class__.__name__ != "QdrantLocal" or not isinstance(collections, dict):
        return False
    done = False
    for collection in collections.values():
        connection = getattr(getattr(collection, "storage", None), "storage", None)
        if connection is None or not hasattr(connection, "execute"):
            continue
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        done = True
    return done


class QdrantStore:
    """Qdrant behind one dedicated thread (local mode is synchronous and not thread-safe)."""

    def __init__(self, url: str | None, path, api_key: str | None = None):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant")
        self.client = self._pool.submit(qdrant_client, url, path, api_key).result()
        self._pool.submit(ensure_collections, self.client).result()
        self._pool.submit(local_commits_without_sync, self.client).result()

    async def upsert_images(self, points: list[dict]) -> None:
        for p in points:
            check_vectors(p["vectors"])
        structs = [m.PointStruct(id=p["id"], vector=p["vectors"], payload=p["payload"]) for p in points]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, lambda: self.client.upsert("images", points=structs, wait=True))

    async def near_duplicates(self, user_id: str, visual: list[float], threshold: float, exclude: str,
                              limit: int = 10) -> list[tuple[str, float]]:
        """(image id, cosine similarity) of the user's other images whose visual vector is at least
        ``threshold`` similar to ``visual``, most similar first."""
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

    def nearest(self, vector_name: str, vector: list[float], query_filter, limit: int, offset: int = 0) -> list:
        return self.run(lambda c: c.query_points("images", query=vector, using=vector_name, query_filter=query_filter,
                                                 limit=limit, offset=offset or None, with_payload=True).points)

    def keyword_matches(self, words: list[str], query_filter, limit: int) -> list:
        """Up to ``limit`` points whose ``keywords`` hold the query's words (Qdrant full-text match; the
        caller counts whole words: local mode matches substrings): first those holding *every* word,
        then, to fill ``limit``, those holding any of them. A scroll returns points in id order, not by
        how many words they hold, so with only the any-word filter the images holding every word were
        mostly cut off at ``limit`` (28 of 312 for a two-word query over 10 000 images: bench/api.py)."""
        def match(w):
            return m.FieldCondition(key="keywords", match=m.MatchText(text=w))

        must, must_not = list(query_filter.must or []), list(query_filter.must_not or [])
        every = m.Filter(must=must + [match(w) for w in words], must_not=must_not or None)
        found = self.run(lambda c: c.scroll("images", scroll_filter=every, limit=limit, with_payload=True)[0])
        if len(words) < 2 or len(found) >= limit:
            return found
        rest = m.Filter(must=must, should=[match(w) for w in words],
                        must_not=must_not + ([m.HasIdCondition(has_id=[p.id for p in found])] if found else []) or None)
        return found + self.run(lambda c: c.scroll("images", scroll_filter=rest, limit=limit - len(found),
                                                   with_payload=True)[0])

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
