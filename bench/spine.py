"""Benchmark of the spine (preprocess + metadata + join, no models) on the running local stack.

    .venv/bin/python bench/spine.py [--n2 300] [--n12 60] [--sink 256] [--json out.json]

Prints, for synthetic photo-like JPEGs with EXIF — 2 MP within the 1600 px cap (1600×1200: validated
by a full decode, kept as its own derivative), 2 MP just over it (1632×1224: decoded, resized and
re-encoded) and 12 MP (4000×3000):
* the floor: bare Pillow decode (draft) + resize of the same files, single-threaded, in this run;
* end to end through Kafka, a real worker and the stores: images/s, p50/p95 upload→analyzed latency,
  per-stage p50 (as the stages report it);
* the Kafka + Avro overhead of one hop: encode + produce + consume + decode of one small record,
  measured with a plain producer/consumer pair on the same broker (p50 over many round trips);
* per image, from a probe loaded into the worker (``install_probe``, through a ``sitecustomize.py`` on
  its PYTHONPATH; lensflow knows nothing of it): the CQL requests by statement (and the statements
  inside batches), the worker's CPU by step (fetch, SHA-256, EXIF/XMP, geocode, decode, resize,
  encode, Avro, logging, the join's Python, its CQL reads and writes on the loop, the driver's I/O
  thread, Kafka/Faust: the rest of the loop; ``WORKER_STEPS``) and the join's wall time by call;
  Cassandra's CPU by thread group (requests, storage, JIT, GC: ``jvm_groups``);
* the sink alone (``--sink N``): the join's Cassandra calls for N images from this process, as a first
  write, a rewrite by a new run and a replay of a run: requests (checked against what Cassandra counted
  on the connection), this process's CPU and Cassandra's, per image.

Comparisons: ``--store FILE`` runs the worker and the sink with another version of streams/store.py
(``git show <rev>:streams/store.py > FILE``); ``--compare FILE`` runs the sink alone with this version
and FILE in one process, rounds alternating, call by call. ``--private-stack DIR`` runs on a Kafka and
a Cassandra of its own (other ports), so that their CPU is the benchmark's alone; a freshly started
one spends more CPU compiling itself than serving the first thousands of images: ``--warm-sink 5000``.
Each run uses its own topic prefix, keyspace and consumer group, and cleans them up afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, round(q / 100 * (len(values) - 1))))
    return values[k]


_NOISE: dict = {}


def _noise(w: int, h: int) -> Image.Image:
    if (w, h) not in _NOISE:
        _NOISE[(w, h)] = Image.effect_noise((w, h), 24).convert("RGB")
    return _NOISE[(w, h)]


def make_photo(w: int, h: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth gradients plus noise (compresses like a camera file), with EXIF."""
    import random

    rnd = random.Random(seed)
    small = Image.new("RGB", (64, 48))
    small.putdata([(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)) for _ in range(64 * 48)])
    img = small.resize((w, h), Image.Resampling.BICUBIC)
    noise = _noise(w, h)
    img = Image.blend(img, noise, 0.15)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "BenchCam", "B-1"
    exif[0x8769] = {0x9003: "2024:05:01 12:00:00", 0x829A: (1, 250), 0x829D: (28, 10)}
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


# --- the probe: CQL requests by statement and the worker's CPU by step ----------------------------
# Installed in the benchmark's worker only, through a ``sitecustomize.py`` on its PYTHONPATH that
# calls ``install_probe`` (nothing in lensflow knows about it). Each step is a wrapper that reads the
# thread's CPU clock on entry and exit and books the *exclusive* time (a step nested in another, say
# geocode inside EXIF, is taken out of its parent). Coroutines are timed step by step (each resume
# in the event loop), so what an ``await`` waits for is not counted. The totals are dumped as JSON
# every 0.5 s to the file named by BENCH_SPINE_PROBE; per-thread CPU comes from each thread's clock.

PROBE_ENV = "BENCH_SPINE_PROBE"
#: The stack the benchmark runs on: the shared local one, or (``--private-stack``) one of its own.
STACK = {"dir": ROOT / ".lensflow" / "stack", "kafka": "127.0.0.1:9092", "cql_port": 9042, "env": {}}


def private_stack(path: Path) -> None:
    """Run on a Kafka and a Cassandra of the benchmark's own (``stack up`` in ``path``, other ports: 19092,
    19093, 19042, 17000), so that their CPU per image is this benchmark's alone, not that of every test
    the shared stack serves meanwhile. Left running afterwards (``LENSFLOW_STACK_DIR=<path>
    LENSFLOW_KAFKA_BOOTSTRAP=127.0.0.1:19092 LENSFLOW_CASSANDRA_PORT=19042 lensflow stack down``)."""
    STACK.update(dir=path.resolve(), kafka="127.0.0.1:19092", cql_port=19042, env={
        "LENSFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:19092", "LENSFLOW_CASSANDRA_PORT": "19042",
        "LENSFLOW_KAFKA_CONTROLLER_PORT": "19093", "LENSFLOW_CASSANDRA_STORAGE_PORT": "17000"})
STORE_ENV = "BENCH_SPINE_STORE"


def use_store(path: str) -> None:
    """Load ``path`` as ``lensflow.streams.store`` (another version of it, e.g. ``git show
    <rev>:streams/store.py``), before anything imports the real one: ``--store`` compares two versions
    of the sink on the same stack, in the worker and in the sink-alone run."""
    import importlib.util

    import lensflow.streams  # noqa: F401  (the package the module belongs to)

    spec = importlib.util.spec_from_file_location("lensflow.streams.store", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["lensflow.streams.store"] = module
    spec.loader.exec_module(module)

#: step label -> what it covers, in the order of the table; "rest" rows are a thread's unlabelled CPU
WORKER_STEPS = {
    "fetch": "read the original (Storage.read)",
    "sha256": "SHA-256 of original and derivative",
    "exif_xmp": "EXIF / XMP / IPTC (metadata.extract, geocode excluded)",
    "geocode": "reverse geocoding (geocode.place_of)",
    "decode": "JPEG decode (ImageFile.load)",
    "resize": "resize (preprocess.shrink)",
    "encode": "JPEG encode (Image.save)",
    "store_derivative": "write the derivative (Storage.write)",
    "preprocess_thread_rest": "the rest of the preprocess threads (prepare's checks, budget, ...)",
    "preprocess_loop": "preprocess on the event loop (records, results)",
    "avro": "Avro encode + decode (Codec)",
    "logging": "logging calls (structlog + stdlib, level warning: mostly filtered)",
    "join_python": "the join's own Python (merge, decide, assemble, JSON, table)",
    "join_reads": "the join's CQL reads, client side on the loop (current, same_bytes, stage_records)",
    "join_writes": "the join's CQL writes, client side on the loop (write, mark_notified)",
    "qdrant_client": "Qdrant calls on the loop (upsert, near duplicates)",
    "loop_rest": "the rest of the event loop: Kafka (aiokafka), Faust, the runner",
    "driver_io": "Cassandra driver I/O thread (libev): sockets, response decoding, callbacks",
    "qdrant_thread": "Qdrant local mode thread",
    "other_threads": "every other thread (prometheus, Faust helpers, ...)",
}

_PROBE: dict = {"cpu": {}, "cql": {}, "batch_statements": {}}


def cql_label(query) -> str:
    """A short name for a statement: verb and table (a SELECT also names its first column, an
    UPDATE its SET), so that each prepared statement of the store has its own."""
    import re

    from cassandra.query import BatchStatement, BoundStatement, PreparedStatement

    if isinstance(query, BatchStatement):
        return "BATCH"
    if isinstance(query, BoundStatement):
        query = query.prepared_statement
    text = query.query_string if isinstance(query, PreparedStatement) else getattr(query, "query_string", str(query))
    text = re.sub(r"\b\w+\.(\w+)", r"\1", " ".join(text.split()))
    m = re.match(r"(?i)(INSERT INTO|DELETE FROM|UPDATE|SELECT)\s+(.*)", text)
    if not m:
        return text[:60]
    verb, rest = m.group(1).upper(), m.group(2)
    if verb == "SELECT":
        cols, table = re.match(r"(?i)(.*?)\s+FROM\s+(\w+)", rest).groups()
        first = cols.split(",")[0].strip()
        where = re.search(r"(?i)WHERE\s+(.*)", rest)
        return f"SELECT {table} ({first}{', …' if ',' in cols else ''}) by {_where_columns(where.group(1)) if where else 'scan'}"
    if verb == "UPDATE":
        table, assigns = re.match(r"(?i)(\w+)(?:\s+USING\s+\w+\s+\S+)?\s+SET\s+(.*?)\s+WHERE", rest).groups()
        return f"UPDATE {table} SET {', '.join(a.split('=')[0].strip() for a in assigns.split(','))}"
    table = re.match(r"(\w+)", rest).group(1)
    return f"{verb.split()[0]} {table}"


def _where_columns(where: str) -> str:
    import re

    return ", ".join(re.findall(r"(\w+)\s*(?:=|IN\b)", where))


def _batch_label(session, batch) -> list[str]:
    """The labels of a batch's statements."""
    out = []
    prepared = getattr(session.cluster, "_prepared_statements", {})
    for is_prepared, statement, _ in batch._statements_and_parameters:
        if is_prepared:
            ps = prepared.get(statement)
            out.append(cql_label(ps) if ps is not None else "prepared ?")
        else:
            out.append(cql_label(statement))
    return out


def install_probe(path: str | None, dump_every_s: float = 0.5) -> dict:
    """Wrap the steps (see WORKER_STEPS) and ``Session.execute_async``; with ``path``, dump the totals
    there every ``dump_every_s`` from a daemon thread. Returns the live totals."""
    import functools
    import hashlib
    import logging
    import threading
    import types

    from cassandra.cluster import Session

    lock = threading.Lock()
    local = threading.local()
    cpu, cql, in_batches = _PROBE["cpu"], _PROBE["cql"], _PROBE["batch_statements"]
    wall = _PROBE.setdefault("wall", {})
    clock = time.thread_time

    def enter():
        stack = getattr(local, "stack", None)
        if stack is None:
            stack = local.stack = []
        stack.append([clock(), 0.0])

    def leave(label):
        start, children = local.stack.pop()
        spent = clock() - start
        with lock:
            cpu[label] = cpu.get(label, 0.0) + spent - children
        if local.stack:
            local.stack[-1][1] += spent

    def timed(label, fn):
        if asyncio_iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def co(*a, **k):
                return await _Stepped(fn(*a, **k), label, enter, leave)
            return co

        @functools.wraps(fn)
        def sync(*a, **k):
            enter()
            try:
                return fn(*a, **k)
            finally:
                leave(label)
        return sync

    def patch(owner, name, label):
        setattr(owner, name, timed(label, getattr(owner, name)))

    if _PROBE.get("installed"):  # once per process (a second wrapper would count every request twice)
        return _PROBE
    _PROBE["installed"] = True
    original_execute_async = Session.execute_async

    def execute_async(self, query, *a, **k):
        label = cql_label(query)
        with lock:
            cql[label] = cql.get(label, 0) + 1
            if label == "BATCH":
                for inner in _batch_label(self, query):
                    in_batches[inner] = in_batches.get(inner, 0) + 1
        return original_execute_async(self, query, *a, **k)

    Session.execute_async = execute_async
    if path is None:  # in the bench's own process: count requests only
        return _PROBE

    exited: dict[str, float] = {}  # CPU of threads that ended (a decode thread per image, say), by name
    finished: set[int] = set()
    original_run = threading.Thread.run

    def run(self):
        try:
            original_run(self)
        finally:
            name = _thread_group(self.name)
            with lock:
                exited[name] = exited.get(name, 0.0) + time.thread_time()
                finished.add(threading.get_ident())  # (still listed by enumerate() for a moment)

    threading.Thread.run = run

    from PIL import Image, ImageFile

    from lensflow.agents import geocode, join, metadata, preprocess
    from lensflow.streams import codec, storage, store

    patch(storage.Storage, "read", "fetch")
    patch(storage.Storage, "write", "store_derivative")
    patch(metadata, "extract", "exif_xmp")
    patch(geocode, "place_of", "geocode")
    patch(ImageFile.ImageFile, "load", "decode")
    patch(preprocess, "shrink", "resize")
    patch(Image.Image, "save", "encode")
    preprocess.hashlib = types.SimpleNamespace(sha256=timed("sha256", hashlib.sha256))
    patch(preprocess, "_work", "preprocess_thread_rest")
    for name in ("process", "one"):
        patch(preprocess.Preprocess, name, "preprocess_loop")
    patch(codec.Codec, "encode", "avro")
    patch(codec.Codec, "decode", "avro")
    import structlog

    patch(structlog.stdlib.BoundLogger, "_proxy_to_logger", "logging")
    patch(logging.Logger, "_log", "logging")
    for name in ("process", "delivered", "write", "find_duplicates", "tick", "complete"):
        patch(join.Join, name, "join_python")

    walled_calls = [(join.Join, "process"), (join.Join, "delivered"), (join.Join, "write"), (join.Join, "complete"),
                    (store.CassandraStore, "current"), (store.CassandraStore, "write"), (store.QdrantStore, "upsert_images")]
    def walled(inner, label):
        @functools.wraps(inner)
        async def timed_wall(*a, **k):
            t0 = time.perf_counter()
            try:
                return await inner(*a, **k)
            finally:
                with lock:
                    calls, spent = wall.get(label, (0, 0.0))
                    wall[label] = (calls + 1, spent + time.perf_counter() - t0)
        return timed_wall

    for owner, name in walled_calls:  # and their wall time, awaits included: how busy the join is, waiting for what
        setattr(owner, name, walled(getattr(owner, name), f"{owner.__name__}.{name}"))
    for name in ("current", "current_many", "same_bytes", "_send_same_bytes", "stage_records"):
        if hasattr(store.CassandraStore, name):  # (the coalesced lookups and notifications are sent by a task of their own)
            patch(store.CassandraStore, name, "join_reads")
    for name in ("write", "mark_notified", "_send_notified"):
        if hasattr(store.CassandraStore, name):
            patch(store.CassandraStore, name, "join_writes")
    for name in ("upsert_images", "near_duplicates"):
        patch(store.QdrantStore, name, "qdrant_client")

    def dump():
        while True:
            time.sleep(dump_every_s)
            with lock:
                threads, done = dict(exited), set(finished)
                finished.clear()
            for t in threading.enumerate():
                if t.ident in done:
                    continue
                try:
                    spent = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
                except (OSError, TypeError, ValueError):
                    continue
                name = _thread_group(t.name)
                threads[name] = threads.get(name, 0.0) + spent
            with lock:
                data = {"cpu": dict(cpu), "cql": dict(cql), "batch_statements": dict(in_batches), "threads": threads, "wall": dict(wall),
                        "process": time.process_time()}
            Path(path + ".tmp").write_text(json.dumps(data))
            os.replace(path + ".tmp", path)

    threading.Thread(target=dump, name="bench-probe", daemon=True).start()
    return _PROBE


#: threads that do preprocess's work: its pool, and a thread per decode where the decode has a time limit
PREPROCESS_THREADS = ("preprocess", "lensflow-decode")


def _thread_group(name: str) -> str:
    """A thread's name without its pool index ("preprocess_2" -> "preprocess")."""
    base, _, index = name.rpartition("_")
    return base if base and index.isdigit() else name


def asyncio_iscoroutinefunction(fn) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


class _Stepped:
    """Awaits ``coro`` and books the CPU of each of its steps (each resume) as ``label``."""

    def __init__(self, coro, label, enter, leave):
        self.coro, self.label, self.enter, self.leave = coro, label, enter, leave

    def __await__(self):
        coro, value, error = self.coro, None, None
        while True:
            self.enter()
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                self.leave(self.label)
            try:
                value, error = (yield yielded), None
            except BaseException as exc:  # noqa: BLE001 (thrown in by the loop: passed on to the coroutine)
                value, error = None, exc


def read_probe(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"cpu": {}, "cql": {}, "batch_statements": {}, "threads": {}, "process": 0.0}


def probe_delta(before: dict, after: dict, images: int) -> dict:
    """Per image: CQL requests by statement (and statements inside batches), and the worker's CPU (ms)
    by step, each thread's unlabelled CPU as its "rest" row."""
    def diff(key):
        return {k: after[key].get(k, 0) - before[key].get(k, 0) for k in after[key]}

    cpu, threads = diff("cpu"), diff("threads")
    loop_labels = ("preprocess_loop", "avro", "logging", "join_python", "join_reads", "join_writes", "qdrant_client")
    # preprocess-thread labels are booked in those threads only; the loop's labels in MainThread (the
    # driver's and Qdrant's threads run no labelled code: their CPU is their thread's clock)
    steps = {k: cpu.get(k, 0.0) for k in WORKER_STEPS if k in cpu}
    pre_labels = ("fetch", "sha256", "exif_xmp", "geocode", "decode", "resize", "encode", "store_derivative",
                  "preprocess_thread_rest")
    # _work's wrapper books what its nested steps leave over: the rest of the preprocess thread's time
    # outside _work (the executor's own code) is added to it
    pre_total = sum(threads.get(name, 0.0) for name in PREPROCESS_THREADS)
    steps["preprocess_thread_rest"] = max(0.0, pre_total - sum(cpu.get(k, 0.0) for k in pre_labels if k != "preprocess_thread_rest"))
    main = threads.get("MainThread", 0.0)
    # logging and avro also run in other threads a little; the loop's rest is its thread minus the loop's labels
    steps["loop_rest"] = max(0.0, main - sum(cpu.get(k, 0.0) for k in loop_labels))
    steps["driver_io"] = threads.get("event_loop", 0.0)
    steps["qdrant_thread"] = threads.get("qdrant", 0.0)
    process = after["process"] - before["process"]
    steps["other_threads"] = max(0.0, process - pre_total - main - steps["driver_io"] - steps["qdrant_thread"])
    join_wall = {}
    for k, (calls, spent) in after.get("wall", {}).items():
        c0, s0 = before.get("wall", {}).get(k, (0, 0.0))
        if calls > c0:
            join_wall[k] = {"calls": calls - c0, "ms_per_call": round((spent - s0) * 1000 / (calls - c0), 2),
                            "ms_per_image": round((spent - s0) * 1000 / images, 2)}
    named = PREPROCESS_THREADS + ("MainThread", "event_loop", "qdrant")
    others = {k: round(v * 1000 / images, 2) for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if k not in named and v > 0}
    return {"other_threads": others, "join_wall": join_wall,
            "requests": {k: v / images for k, v in sorted(diff("cql").items()) if v},
            "in_batches": {k: v / images for k, v in sorted(diff("batch_statements").items()) if v},
            "requests_total": sum(diff("cql").values()) / images,
            "cpu_ms": {k: steps.get(k, 0.0) * 1000 / images for k in WORKER_STEPS},
            "cpu_ms_total": process * 1000 / images}


def print_probe(p: dict) -> None:
    print(f"  CQL requests per image: {p['requests_total']:.2f}")
    for k, v in p["requests"].items():
        print(f"    {v:6.2f}  {k}")
    for k, v in p["in_batches"].items():
        print(f"           {v:6.2f} in batches: {k}")
    print(f"  worker CPU per image by step ({p['cpu_ms_total']:.1f} ms in all):")
    for k, v in p["cpu_ms"].items():
        print(f"    {v:6.2f} ms  {k:<24} {WORKER_STEPS[k]}")
    print("    other threads (ms): " + ", ".join(f"{k} {v}" for k, v in list(p["other_threads"].items())[:6]))
    for k, v in p["join_wall"].items():
        print(f"  {k}: {v['calls']} calls, {v['ms_per_call']} ms each (wall, awaits included), {v['ms_per_image']} ms per image")


# --- the sink alone: the join's Cassandra calls from this process, on rows the pipeline stored -----

def _own_ports() -> set[int]:
    """Local TCP ports of this process's sockets (from /proc: no psutil here)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def server_requests(session) -> int:
    """Requests Cassandra counted on this session's pool connections (``system_views.clients``),
    less the one this read adds."""
    ports = {pool._connection._socket.getsockname()[1] for pool in session._pools.values()}
    rows = session.execute("SELECT port, request_count FROM system_views.clients")
    return sum(r.request_count for r in rows if r.port in ports) - 1


def stored_samples(session, keyspace: str, limit: int = 40) -> list[tuple[dict, dict, list[dict]]]:
    """(image row, analysis row, tags) of images the pipeline stored, as the join would write them."""
    from lensflow.streams.store import ANALYSIS_COLUMNS, IMAGE_COLUMNS

    def plain(v):
        return dict(v) if hasattr(v, "items") else v

    out = []
    for r in session.execute(f"SELECT * FROM {keyspace}.images LIMIT {int(limit)}"):
        a = session.execute(f"SELECT * FROM {keyspace}.analysis_results WHERE image_id = %s AND run_id = %s",
                            (r.image_id, r.run_id)).one()
        tags = [{"kind": t.kind, "tag": t.tag, "score": t.score} for t in
                session.execute(f"SELECT kind, tag, score FROM {keyspace}.image_tags WHERE image_id = %s", (r.image_id,))]
        out.append(({c: plain(getattr(r, c, None)) for c in IMAGE_COLUMNS},
                    {c: plain(getattr(a, c, None)) for c in ANALYSIS_COLUMNS}, tags))
    return out


def changed_tags(tags: list[dict]) -> list[dict]:
    """A rewrite's tags: the first dropped, one score changed, one added."""
    kept = [dict(t) for t in tags[1:]]
    if kept:
        kept[0]["score"] = round(float(kept[0]["score"]) / 2, 3)
    return kept + [{"kind": "object", "tag": "bench-added", "score": 0.5}]


def warm_sink(keyspace: str, n: int, wave: int = 32) -> None:
    """``n`` images through the join's Cassandra calls (a first write, then a rewrite), not measured:
    a freshly started Cassandra spends more CPU compiling itself (its JIT) than serving the first
    thousands of images (``bench/RESULTS.md``, 2026-12-06), so a run on a fresh stack warms it first."""
    import asyncio

    from lensflow.streams.store import CassandraStore

    store = CassandraStore(["127.0.0.1"], STACK["cql_port"], keyspace)
    samples = stored_samples(store.session, keyspace)
    tag = uuid.uuid4().hex[:6]

    async def one(row, analysis, tags, rewrite):
        row, analysis = {**row, "image_id": row["image_id"]}, dict(analysis)
        if rewrite:
            row.update(run_id=f"{row['run_id']}-2", analysis_version=2)
            analysis.update(run_id=row["run_id"], analysis_version=2)
            tags = changed_tags(tags)
        stored = await store.current(row["image_id"])
        await store.same_bytes(row["user_id"], row.get("sha256") or "")
        await store.write(row, analysis, tags, stored is None)
        await store.mark_notified(row["image_id"], row["run_id"])

    async def run():
        for rewrite in (False, True):
            for start in range(0, n, wave):
                batch = []
                for i in range(start, min(n, start + wave)):
                    row, analysis, tags = samples[i % len(samples)]
                    image_id = f"warm-{tag}-{i}"
                    batch.append(({**row, "image_id": image_id, "user_id": "warm"}, {**analysis, "image_id": image_id}, tags))
                await asyncio.gather(*(one(*b, rewrite) for b in batch))

    t0 = time.perf_counter()
    asyncio.run(run())
    store.close()
    print(f"  (Cassandra warmed with {n} images through the sink, twice, in {time.perf_counter() - t0:.0f}s)")


def sink_bench(keyspace: str, cassandra_pid: int | None, n: int = 256, wave: int = 32) -> dict:
    """The join's calls for each image (``current``, ``same_bytes``, ``write``, ``mark_notified``), ``wave``
    images at a time, against the real Cassandra, for three cases: a first write, a rewrite by a new run
    (one tag dropped, one added, one score changed), and a replay of that run (nothing changed). Per
    image: CQL requests by statement (this process's counting wrapper, checked against the requests
    Cassandra counted on the connection), this process's CPU (the driver's side of what the worker
    pays) and Cassandra's CPU (less its idle rate, measured for 3 s before each case)."""
    import asyncio

    from lensflow.streams.store import CassandraStore

    probe = install_probe(None)
    store = CassandraStore(["127.0.0.1"], STACK["cql_port"], keyspace)
    samples = stored_samples(store.session, keyspace)
    if not samples:
        raise SystemExit("no stored images to replay")
    tag = uuid.uuid4().hex[:6]

    def image(i: int, case: str):
        row, analysis, tags = samples[i % len(samples)]
        image_id = f"sink-{tag}-{i}"
        row = {**row, "image_id": image_id, "user_id": "bench"}
        analysis = {**analysis, "image_id": image_id}
        if case != "first write":
            run_id = f"{row['run_id']}-2"
            row.update(run_id=run_id, analysis_version=2)
            analysis.update(run_id=run_id, analysis_version=2)
            tags = changed_tags(tags)
        return row, analysis, tags

    async def one(row, analysis, tags):
        stored = await store.current(row["image_id"])
        if row.get("sha256"):
            await store.same_bytes(row["user_id"], row["sha256"])
        await store.write(row, analysis, tags, first_write=stored is None)
        await store.mark_notified(row["image_id"], row["run_id"])

    async def case_run(case):
        for start in range(0, n, wave):
            await asyncio.gather(*(one(*image(i, case)) for i in range(start, min(n, start + wave))))

    out = {}
    for case in ("first write", "rewrite, new run", "replay, same run"):
        idle0, t_idle = cpu_seconds({"c": cassandra_pid}).get("c", float("nan")), time.perf_counter()
        time.sleep(3)
        idle_rate = (cpu_seconds({"c": cassandra_pid}).get("c", float("nan")) - idle0) / (time.perf_counter() - t_idle)
        before_req, before_srv = dict(probe["cql"]), server_requests(store.session)
        before_in = dict(probe["batch_statements"])
        jvm0 = jvm_threads(cassandra_pid)
        c0, p0, t0 = cpu_seconds({"c": cassandra_pid}).get("c", float("nan")), time.process_time(), time.perf_counter()
        asyncio.run(case_run(case))
        c1, p1, t1 = cpu_seconds({"c": cassandra_pid}).get("c", float("nan")), time.process_time(), time.perf_counter()
        threads = {k: round(v * 1000 / n, 2) for k, v in jvm_groups(jvm0, jvm_threads(cassandra_pid)).items()}
        srv = server_requests(store.session) - before_srv
        req = {k: (v - before_req.get(k, 0)) / n for k, v in probe["cql"].items() if v - before_req.get(k, 0)}
        inb = {k: (v - before_in.get(k, 0)) / n for k, v in probe["batch_statements"].items() if v - before_in.get(k, 0)}
        out[case] = {"requests": req, "in_batches": inb, "requests_total": sum(req.values()), "server_requests": srv / n,
                     "client_cpu_ms": (p1 - p0) * 1000 / n, "cassandra_cpu_ms": (c1 - c0) * 1000 / n,
                     "cassandra_idle_ms": idle_rate * (t1 - t0) * 1000 / n, "wall_ms": (t1 - t0) * 1000 / n,
                     "cassandra_threads_ms": threads}
        out[case]["cassandra_cpu_less_idle_ms"] = out[case]["cassandra_cpu_ms"] - out[case]["cassandra_idle_ms"]
        f = out[case]
        print(f"\n== the sink alone, {case} ({n} images, {wave} at a time): {f['requests_total']:.2f} CQL requests per image "
              f"(Cassandra counted {f['server_requests']:.2f})")
        for k, v in req.items():
            print(f"    {v:6.2f}  {k}")
        for k, v in inb.items():
            print(f"           {v:6.2f} in batches: {k}")
        print(f"  client CPU {f['client_cpu_ms']:.2f} ms/image; Cassandra CPU {f['cassandra_cpu_ms']:.2f} ms/image "
              f"({f['cassandra_cpu_less_idle_ms']:.2f} less its idle rate); wall {f['wall_ms']:.2f} ms/image")
        print("  Cassandra by thread group (ms per image): " + ", ".join(f"{k} {v}" for k, v in threads.items()))
    store.close()
    return out


def load_store_module(path: str, name: str = "lensflow.streams.store_compared"):
    """``path`` (a version of streams/store.py) as a module of its own, beside the real one."""
    import importlib.util

    import lensflow.streams  # noqa: F401

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


SINK_STEPS = ("current", "same_bytes", "write", "mark_notified")


def sink_compare(keyspace: str, cassandra_pid: int | None, other: str, rounds: int = 6, n: int = 512, wave: int = 32) -> dict:
    """This ``streams/store.py`` against ``other`` (another version of it) on the same Cassandra, in one
    process, rounds alternating (so that whatever else loads the machine loads both alike). Per round and
    version, ``n`` images go through the join's calls as a first write, then as a rewrite by a new run
    (``sink_bench``'s cases), one call at a time over all the images (``wave`` at once, gathered like the
    join's), so that each call's cost is measured on its own: requests, Cassandra's CPU (its JIT compiler
    threads apart) and this process's CPU per image, medians over the rounds."""
    import asyncio

    from lensflow.streams import store as this

    probe = install_probe(None)
    stores = {"this": this.CassandraStore(["127.0.0.1"], STACK["cql_port"], keyspace),
              "other": load_store_module(other).CassandraStore(["127.0.0.1"], STACK["cql_port"], keyspace)}
    samples = stored_samples(stores["this"].session, keyspace)
    tag = uuid.uuid4().hex[:6]

    def images(variant, r, case):
        out = []
        for i in range(n):
            row, analysis, tags = samples[i % len(samples)]
            image_id = f"cmp-{tag}-{variant}-{r}-{i}"
            row, analysis = {**row, "image_id": image_id, "user_id": "bench"}, {**analysis, "image_id": image_id}
            if case == "rewrite, new run":
                row.update(run_id=f"{row['run_id']}-2", analysis_version=2)
                analysis.update(run_id=row["run_id"], analysis_version=2)
                tags = changed_tags(tags)
            out.append((row, analysis, tags))
        return out

    async def step(store, name, batch, stored):
        for start in range(0, len(batch), wave):
            part = batch[start:start + wave]
            if name == "current":
                found = await asyncio.gather(*(store.current(row["image_id"]) for row, _, _ in part))
                stored.update({row["image_id"]: s for (row, _, _), s in zip(part, found)})
            elif name == "same_bytes":
                await asyncio.gather(*(store.same_bytes(row["user_id"], row["sha256"]) for row, _, _ in part if row.get("sha256")))
            elif name == "write":
                await asyncio.gather(*(store.write(row, analysis, tags, stored[row["image_id"]] is None) for row, analysis, tags in part))
            else:
                await asyncio.gather(*(store.mark_notified(row["image_id"], row["run_id"]) for row, _, _ in part))

    figures: dict = {}
    for r in range(rounds):
        order = ("this", "other") if r % 2 == 0 else ("other", "this")
        for case in ("first write", "rewrite, new run"):
            for variant in order:
                batch, stored = images(variant, r, case), {}
                for name in SINK_STEPS:
                    before = dict(probe["cql"])
                    jvm0 = jvm_threads(cassandra_pid)
                    p0 = time.process_time()
                    asyncio.run(step(stores[variant], name, batch, stored))
                    p1 = time.process_time()
                    jvm = jvm_groups(jvm0, jvm_threads(cassandra_pid))
                    f = figures.setdefault(case, {}).setdefault(variant, {}).setdefault(name, {})
                    for k, v in {"requests": sum(v - before.get(k, 0) for k, v in probe["cql"].items()),
                                 "client_cpu": (p1 - p0) * 1000, **{f"cassandra_{k}": v * 1000 for k, v in jvm.items()}}.items():
                        f.setdefault(k, []).append(v / n)
    out: dict = {}
    print(f"\n== the sink alone, this store.py against {other}: {rounds} rounds of {n} images each, alternating; "
          "per image, medians of Cassandra's CPU by thread group (jvm_groups) and of this process's")
    for case, variants in figures.items():
        for variant, by_step in variants.items():
            m = out.setdefault(case, {}).setdefault(variant, {})
            for name, f in by_step.items():
                m[name] = {k: round(statistics.median(v), 3) for k, v in f.items()}
                m[name]["rounds"] = {k: [round(x, 2) for x in v] for k, v in f.items() if k.startswith("cassandra")}
            total = {k: round(sum(m[name][k] for name in SINK_STEPS), 2) for k in m["write"] if k != "rounds"}
            m["all"] = total
            print(f"  {case:<18} {variant:<5}: {total['requests']:.2f} requests, Cassandra {total['cassandra_requests']:.2f} ms "
                  f"serving them (+ storage {total['cassandra_storage']:.2f}, JIT {total['cassandra_jit']:.2f}, GC {total['cassandra_gc']:.2f}), "
                  f"client {total['client_cpu']:.2f} ms; by call: "
                  + "; ".join(f"{name} {m[name]['requests']:.2f} req {m[name]['cassandra_requests']:.2f} ms" for name in SINK_STEPS))
    for s in stores.values():
        s.close()
    return out


def floor_ms(files: list[Path], max_side: int = 1600) -> list[float]:
    """Bare decode (Pillow's draft mode) + the same resize as preprocess (``shrink``), one thread:
    the cost no pipeline can beat."""
    from lensflow.agents.preprocess import shrink

    out = []
    for f in files:
        data = f.read_bytes()
        t0 = time.perf_counter()
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        scale = min(1.0, max_side / max(w, h))
        target = (round(w * scale), round(h * scale))
        img.draft("RGB", target)
        img.load()
        if img.size != target:
            img = shrink(img, target)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def hop_overhead_ms(env: dict, topic: str, n: int = 300) -> list[float]:
    """One Kafka+Avro hop: encode, produce, consume, decode a MetadataResult-sized record."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from lensflow.streams.codec import Codec
    from lensflow.streams.records import now

    codec = Codec()
    producer = Producer({"bootstrap.servers": STACK["kafka"], "partitioner": "murmur2_random", "linger.ms": 0,
                         "acks": "all", "enable.idempotence": True})
    consumer = Consumer({"bootstrap.servers": STACK["kafka"], "group.id": f"bench-{uuid.uuid4()}",
                         "fetch.wait.max.ms": 1, "enable.auto.commit": False})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p))[1])
                     for p in meta.partitions])
    time.sleep(1)
    out = []
    for i in range(n):
        rec = {"image_id": f"hop-{i}", "user_id": "bench", "run_id": "r", "stage": "metadata", "model": None,
               "status": "ok", "error": None, "duration_ms": 0.0, "produced_at": now(), "camera_make": "BenchCam",
               "camera_model": "B-1", "width": 4000, "height": 3000, "orientation": 1, "warnings": []}
        t0 = time.perf_counter()
        producer.produce(topic, key=rec["image_id"].encode(), value=codec.encode("MetadataResult", rec))
        producer.flush(10)
        while True:
            msg = consumer.poll(1)
            if msg is not None and not msg.error():
                codec.decode(msg.value())
                break
        out.append((time.perf_counter() - t0) * 1000)
    consumer.close()
    return out[20:]  # warm-up


def bench_env(prefix: str, port: int, work: Path, overrides: list[str] = ()) -> dict:
    """The environment of a benchmark worker: the shared local stack, its own data dir, topic prefix,
    keyspace and consumer group (cleaned up by ``_cleanup``), plus NAME=VALUE setting overrides."""
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENSFLOW_")}
    env.update(STACK["env"])
    env.update(LENSFLOW_STACK_DIR=str(STACK["dir"]), LENSFLOW_DATA_DIR=str(work / "data"),
               LENSFLOW_TOPIC_PREFIX=f"{prefix}{tag}.", LENSFLOW_CASSANDRA_KEYSPACE=f"{prefix}_{tag}",
               LENSFLOW_APP_ID=f"bench-{tag}", LENSFLOW_WEB_PORT=str(port), LENSFLOW_LOG_LEVEL="warning",
               LENSFLOW_API_IN_WORKER="false")  # the stream alone (bench/api.py measures the read service)
    for item in overrides:
        name, _, value = item.partition("=")
        env[f"LENSFLOW_{name.upper()}"] = value
    return env


@contextlib.contextmanager
def bench_worker(env: dict, port: int, work: Path, stages: str | None = None, cleanup: bool = True, log: str = "worker.log",
                 probe: Path | None = None):
    """A worker for one benchmark run (log in ``work/<log>``; ``stages``: its ``--stages``), yielded once
    /readyz answers; afterwards stopped, and (``cleanup``) the run's topics and keyspace removed. Exits
    with the log's path if the worker dies or is not ready within 300 s. ``probe``: the worker counts
    its CQL requests and times its steps (``install_probe``), dumping them to this file."""
    from lensflow.cli.supervise import poll_ready

    env = {**env, "LENSFLOW_WEB_PORT": str(port)}
    if probe is not None:
        site = work / "probe-site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(
            "import os, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
            "import spine\n"
            f"if os.environ.get({STORE_ENV!r}):\n"
            f"    spine.use_store(os.environ[{STORE_ENV!r}])\n"
            f"spine.install_probe(os.environ[{PROBE_ENV!r}])\n")
        env.update({PROBE_ENV: str(probe), "PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))})
    worker = subprocess.Popen([sys.executable, "-m", "lensflow.cli", "worker"] + (["--stages", stages] if stages else []),
                              env=env, stdout=open(work / log, "wb"), stderr=subprocess.STDOUT)
    try:
        outcome = poll_ready(f"http://127.0.0.1:{port}/readyz", 300, lambda: worker.poll() is not None)
        if outcome != "ready":
            raise SystemExit(f"worker {'exited' if outcome == 'exited' else 'not ready'}; see {work / log}")
        yield worker
    finally:
        worker.terminate()
        worker.wait(60)
        if cleanup:
            _cleanup(env)


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process, in MiB (None once it is gone)."""
    rss = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return int(rss) / 1024 if rss else None


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """utime + stime of each process (all threads), from /proc."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            out[name] = float("nan")
    return out


def jvm_threads(pid: int | None) -> dict:
    """A JVM's CPU seconds: the process's (``process``, which keeps the time of ended threads) and each
    live thread's as (kind, seconds) by thread id, the kind being the thread's name without its number
    (Native-Transport-Requests, MemtableFlushWriter, C2 CompilerThread, GC Thread ...; the kernel cuts
    names to 15 characters)."""
    import re

    out: dict = {"process": 0.0, "tids": {}}
    if pid is None:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    out["process"] = cpu_seconds({"p": pid})["p"]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kind = re.sub(r"[-:#]?\d+$", "", name).strip() or name
        out["tids"][task.name] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    return out


def jvm_groups(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds between two ``jvm_threads`` readings, in groups: ``storage`` (memtable flushes,
    compaction, the commit log: in proportion to the bytes written, and in bursts), ``jit`` (the C1/C2
    compilers: a JVM warming up), ``gc``, and ``requests``: the rest (the request pool, the network
    threads, timers), taken as the process's time less the groups', since the request pool's threads
    come and go and rename themselves after the stage they serve."""
    out = {"requests": 0.0, "storage": 0.0, "jit": 0.0, "gc": 0.0}
    for tid, (kind, spent) in after["tids"].items():
        if "CompilerThre" in kind:
            group = "jit"
        elif kind.startswith(("GC ", "G1 ")):
            group = "gc"
        elif any(w in kind for w in ("Flush", "Compaction", "Memtable", "COMMIT-LOG")):
            group = "storage"
        else:
            continue
        known = before["tids"].get(tid)
        out[group] += spent - (known[1] if known and known[0] == kind else 0.0)
    out["requests"] = after["process"] - before["process"] - out["jit"] - out["gc"] - out["storage"]
    return out


def run_pipeline(env: dict, files: list[Path], timeout_s: float, user: str = "bench", stages: str | None = None) -> list[dict]:
    from confluent_kafka import Consumer, TopicPartition

    from lensflow.streams.codec import Codec

    prefix = env["LENSFLOW_TOPIC_PREFIX"]
    analyzed_topic = prefix + "images.analyzed"
    consumer = Consumer({"bootstrap.servers": STACK["kafka"], "group.id": f"bench-{uuid.uuid4()}", "enable.auto.commit": False})
    meta = consumer.list_topics(analyzed_topic, timeout=10).topics[analyzed_topic]
    consumer.assign([TopicPartition(analyzed_topic, p, consumer.get_watermark_offsets(TopicPartition(analyzed_topic, p))[1])
                     for p in meta.partitions])
    codec = Codec()
    t0 = time.perf_counter()
    extra = ["--stages", stages] if stages else []
    proc = subprocess.run([sys.executable, "-m", "lensflow.cli", "submit", "--user", user, "--json", *extra,
                           *map(str, files)], env=env, capture_output=True, text=True, check=True)
    submitted = time.perf_counter()
    ids = {json.loads(line)["image_id"] for line in proc.stdout.splitlines() if line.startswith("{")}
    results: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while len(results) < len(ids) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        _, rec = codec.decode(msg.value())
        if rec["image_id"] in ids and rec["image_id"] not in results:
            rec["_wall"] = time.perf_counter() - t0
            results[rec["image_id"]] = rec
    consumer.close()
    if len(results) < len(ids):
        raise SystemExit(f"only {len(results)}/{len(ids)} images analyzed within {timeout_s}s")
    print(f"  (submit of {len(ids)} files took {submitted - t0:.2f}s, copying them into storage included)")
    return list(results.values())


def summarise(recs: list[dict]) -> dict:
    """Throughput (first upload -> last analyzed), latency percentiles and per-stage medians of
    ImageAnalyzed records, and when each image completed (seconds after the first upload)."""
    first_upload = min(r["uploaded_at"] for r in recs)
    last = max(r["analyzed_at"] for r in recs)
    done = sorted(r["analyzed_at"] for r in recs)
    e2e = [(r["analyzed_at"] - r["uploaded_at"]).total_seconds() * 1000 for r in recs]
    stages: dict[str, list[float]] = {}
    for r in recs:
        for s in r["stages"]:
            stages.setdefault(s["stage"], []).append(s["duration_ms"])
    return {"images": len(recs), "statuses": sorted({r["status"] for r in recs}),
            "images_per_s": len(recs) / (last - first_upload).total_seconds(),
            "completed_at_s": [round((t - first_upload).total_seconds(), 2) for t in done],
            "uploads_span_s": (max(r["uploaded_at"] for r in recs) - first_upload).total_seconds(),
            "latency_p50_ms": pct(e2e, 50), "latency_p95_ms": pct(e2e, 95),
            "stage_p50_ms": {k: statistics.median(v) for k, v in stages.items()}}


def report(label: str, files: list[Path], recs: list[dict], floor: list[float]) -> dict:
    statuses = {r["status"] for r in recs}
    out = {"label": label, **summarise(recs),
           "images_per_s_incl_submit": len(recs) / max(r["_wall"] for r in recs),
           "floor_decode_resize_p50_ms": statistics.median(floor)}
    out["preprocess_vs_floor"] = out["stage_p50_ms"]["preprocess"] / out["floor_decode_resize_p50_ms"]
    out["wall_ms_per_image"] = 1000 / out["images_per_s"]
    out["wall_vs_floor"] = out["wall_ms_per_image"] / out["floor_decode_resize_p50_ms"]
    print(f"\n== {label}: {len(recs)} images, status {sorted(statuses)}")
    print(f"  throughput      {out['images_per_s']:.1f} images/s (first upload → last analyzed); "
          f"{out['wall_ms_per_image']:.1f} ms/image of wall time on {os.cpu_count()} cores, "
          f"{out['wall_vs_floor']:.2f}x the floor")
    print(f"  latency         p50 {out['latency_p50_ms']:.0f} ms, p95 {out['latency_p95_ms']:.0f} ms (upload → analyzed, under full load)")
    for k, v in out["stage_p50_ms"].items():
        print(f"  stage {k:<10} p50 {v:.1f} ms")
    print(f"  floor           p50 {out['floor_decode_resize_p50_ms']:.1f} ms (bare draft decode + preprocess's resize, 1 thread)")
    print(f"  preprocess/floor {out['preprocess_vs_floor']:.2f}x (stage p50 incl. fetch, EXIF, encode, store)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n2", type=int, default=300, help="2 MP images (each set)")
    ap.add_argument("--n2-over", type=int, help="2 MP images over the cap (default: --n2)")
    ap.add_argument("--n12", type=int, default=60, help="12 MP images")
    ap.add_argument("--hops", type=int, default=300, help="round trips for the per-hop overhead (0: none)")
    ap.add_argument("--sink", type=int, default=256, help="images for the sink-alone run (0: none)")
    ap.add_argument("--warm-sink", type=int, default=0, metavar="N", help="before measuring, N images through the sink alone "
                    "(twice: first write and rewrite), unmeasured: on a freshly started stack, e.g. 5000")
    ap.add_argument("--compare", type=Path, help="after the pipeline, the sink alone: this streams/store.py against this "
                    "other version of it, rounds alternating in one process (see sink_compare)")
    ap.add_argument("--private-stack", type=Path, metavar="DIR", help="run on a Kafka and a Cassandra of its own, in DIR "
                    "(see private_stack): their CPU per image without the load of other users of the shared stack")
    ap.add_argument("--store", type=Path, help="run the worker and the sink-alone run with this version of streams/store.py "
                    "(e.g. from `git show <rev>:streams/store.py`): a before/after comparison on the same stack")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a worker setting, e.g. --set preprocess_threads=3 (repeatable)")
    args = ap.parse_args()

    if args.private_stack:
        private_stack(args.private_stack)
    work = Path(tempfile.mkdtemp(prefix="lensflow-bench-"))
    env = bench_env("b", 6099, work, ["stages=metadata", *args.set])  # the spine: EXIF only, no models
    if args.store:
        use_store(str(args.store.resolve()))
        env[STORE_ENV] = str(args.store.resolve())
        print(f"streams/store.py replaced by {args.store} (worker and sink-alone run)")
    cli = [sys.executable, "-m", "lensflow.cli"]
    subprocess.run(cli + ["stack", "up"], env=env, check=True)

    print("making synthetic photos ...", flush=True)
    sets = {}
    over = args.n2 if args.n2_over is None else args.n2_over
    for label, (w, h), n in [x for x in [("2 MP within the cap", (1600, 1200), args.n2), ("2 MP over the cap", (1632, 1224), over),
                             ("12 MP", (4000, 3000), args.n12)] if x[2] > 0]:
        d = work / label.replace(" ", "_")
        d.mkdir()
        files = []
        for i in range(n):
            p = d / f"{i:04d}.jpg"
            p.write_bytes(make_photo(w, h, seed=hash((label, i)) & 0xFFFF))
            files.append(p)
        sets[label] = files

    figures = {"cpu_count": os.cpu_count()}
    run_dir = STACK["dir"] / "run"
    probe = work / "probe.json"
    with bench_worker(env, 6099, work, probe=probe) as worker:
        pids = {"worker": worker.pid}
        for svc in ("kafka", "cassandra"):
            try:
                pids[svc] = int((run_dir / f"{svc}.pid").read_text().split()[0])
            except (OSError, ValueError):
                pass
        # warm-up: code paths, connections, JIT-free but cache-warm
        warm = work / "warmup"
        warm.mkdir()
        warm_files = []
        for i in range(12):
            (warm / f"{i}.jpg").write_bytes(make_photo(2000, 1500, seed=100_000 + i))
            warm_files.append(warm / f"{i}.jpg")
        run_pipeline(env, warm_files, 120)
        if args.warm_sink:
            warm_sink(env["LENSFLOW_CASSANDRA_KEYSPACE"], args.warm_sink)
        for label, files in sets.items():
            floor = floor_ms(files)
            time.sleep(1.5)  # the probe's last dump covers the previous set's notifications
            before, probed, jvm0 = cpu_seconds(pids), read_probe(probe), jvm_threads(pids.get("cassandra"))
            recs = run_pipeline(env, files, 600)
            time.sleep(1.5)  # the join records notifications after the images.analyzed events
            after, jvm1 = cpu_seconds(pids), jvm_threads(pids.get("cassandra"))
            figures[label] = report(label, files, recs, floor)
            cpu = {k: (after[k] - before[k]) * 1000 / len(recs) for k in pids}
            figures[label]["cpu_ms_per_image"] = cpu
            print("  cpu per image   " + ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items()))
            figures[label]["cassandra_ms"] = {k: v * 1000 / len(recs) for k, v in jvm_groups(jvm0, jvm1).items()}
            print("  cassandra       " + ", ".join(f"{k} {v:.1f} ms" for k, v in figures[label]["cassandra_ms"].items())
                  + " per image (by thread group: jvm_groups)")
            figures[label]["probe"] = probe_delta(probed, read_probe(probe), len(recs))
            print_probe(figures[label]["probe"])
        if args.hops > 20:
            hops = hop_overhead_ms(env, env["LENSFLOW_TOPIC_PREFIX"] + "analysis.metadata", args.hops)
            figures["hop_p50_ms"], figures["hop_p95_ms"] = statistics.median(hops), pct(hops, 95)
            print(f"\n== one Kafka+Avro hop (encode, produce acks=all, consume, decode): p50 {figures['hop_p50_ms']:.2f} ms, "
                  f"p95 {figures['hop_p95_ms']:.2f} ms")
        figures["worker_rss_mib"] = rss_mib(worker.pid)
        print(f"   worker RSS {figures['worker_rss_mib']:.0f} MiB")
        if args.sink:
            figures["sink"] = sink_bench(env["LENSFLOW_CASSANDRA_KEYSPACE"], pids.get("cassandra"), args.sink)
        if args.compare:
            figures["sink_compare"] = sink_compare(env["LENSFLOW_CASSANDRA_KEYSPACE"], pids.get("cassandra"), str(args.compare))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


def _cleanup(env: dict) -> None:
    from cassandra.cluster import Cluster
    from confluent_kafka.admin import AdminClient

    cluster = Cluster(["127.0.0.1"], port=STACK["cql_port"], protocol_version=5)
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {env['LENSFLOW_CASSANDRA_KEYSPACE']}", timeout=60)
    finally:
        cluster.shutdown()
    admin = AdminClient({"bootstrap.servers": STACK["kafka"]})
    mine = [t for t in admin.list_topics(timeout=10).topics
            if t.startswith(env["LENSFLOW_TOPIC_PREFIX"]) or t.startswith(env["LENSFLOW_APP_ID"])]
    if mine:
        for f in admin.delete_topics(mine).values():
            try:
                f.result()
            except Exception:
                pass


if __name__ == "__main__":
    main()
