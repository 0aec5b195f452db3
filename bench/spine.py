"""Benchmark of the spine (preprocess + metadata + join, no models) on the running local stack.

    .venv/bin/python bench/spine.py [--n2 300] [--n12 60] [--json out.json]

Prints, for synthetic photo-like JPEGs with EXIF — 2 MP within the 1600 px cap (1600×1200: validated
by a full decode, kept as its own derivative), 2 MP just over it (1632×1224: decoded, resized and
re-encoded) and 12 MP (4000×3000):
* the floor: bare Pillow decode (draft) + resize of the same files, single-threaded, in this run;
* end to end through Kafka, a real worker and the stores: images/s, p50/p95 upload→analyzed latency,
  per-stage p50 (as the stages report it);
* the Kafka + Avro overhead of one hop: encode + produce + consume + decode of one small record,
  measured with a plain producer/consumer pair on the same broker (p50 over many round trips).
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
    producer = Producer({"bootstrap.servers": "127.0.0.1:9092", "partitioner": "murmur2_random", "linger.ms": 0,
                         "acks": "all", "enable.idempotence": True})
    consumer = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": f"bench-{uuid.uuid4()}",
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
    env.update(LENSFLOW_STACK_DIR=str(ROOT / ".lensflow" / "stack"), LENSFLOW_DATA_DIR=str(work / "data"),
               LENSFLOW_TOPIC_PREFIX=f"{prefix}{tag}.", LENSFLOW_CASSANDRA_KEYSPACE=f"{prefix}_{tag}",
               LENSFLOW_APP_ID=f"bench-{tag}", LENSFLOW_WEB_PORT=str(port), LENSFLOW_LOG_LEVEL="warning")
    for item in overrides:
        name, _, value = item.partition("=")
        env[f"LENSFLOW_{name.upper()}"] = value
    return env


@contextlib.contextmanager
def bench_worker(env: dict, port: int, work: Path, stages: str | None = None, cleanup: bool = True, log: str = "worker.log"):
    """A worker for one benchmark run (log in ``work/<log>``; ``stages``: its ``--stages``), yielded once
    /readyz answers; afterwards stopped, and (``cleanup``) the run's topics and keyspace removed. Exits
    with the log's path if the worker dies or is not ready within 300 s."""
    from lensflow.streams.cli import poll_ready

    env = {**env, "LENSFLOW_WEB_PORT": str(port)}
    worker = subprocess.Popen([sys.executable, "-m", "lensflow.streams.cli", "worker"] + (["--stages", stages] if stages else []),
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


def run_pipeline(env: dict, files: list[Path], timeout_s: float, user: str = "bench", stages: str | None = None) -> list[dict]:
    from confluent_kafka import Consumer, TopicPartition

    from lensflow.streams.codec import Codec

    prefix = env["LENSFLOW_TOPIC_PREFIX"]
    analyzed_topic = prefix + "images.analyzed"
    consumer = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": f"bench-{uuid.uuid4()}", "enable.auto.commit": False})
    meta = consumer.list_topics(analyzed_topic, timeout=10).topics[analyzed_topic]
    consumer.assign([TopicPartition(analyzed_topic, p, consumer.get_watermark_offsets(TopicPartition(analyzed_topic, p))[1])
                     for p in meta.partitions])
    codec = Codec()
    t0 = time.perf_counter()
    extra = ["--stages", stages] if stages else []
    proc = subprocess.run([sys.executable, "-m", "lensflow.streams.cli", "submit", "--user", user, "--json", *extra,
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
    print(f"\n== {label}: {len(recs)} images, status {sorted(statuses)}")
    print(f"  throughput      {out['images_per_s']:.1f} images/s (first upload → last analyzed); "
          f"{out['wall_ms_per_image']:.1f} ms/image of wall time on {os.cpu_count()} cores")
    print(f"  latency         p50 {out['latency_p50_ms']:.0f} ms, p95 {out['latency_p95_ms']:.0f} ms (upload → analyzed, under full load)")
    for k, v in out["stage_p50_ms"].items():
        print(f"  stage {k:<10} p50 {v:.1f} ms")
    print(f"  floor           p50 {out['floor_decode_resize_p50_ms']:.1f} ms (bare draft decode + preprocess's resize, 1 thread)")
    print(f"  preprocess/floor {out['preprocess_vs_floor']:.2f}x (stage p50 incl. fetch, EXIF, encode, store)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n2", type=int, default=300, help="2 MP images")
    ap.add_argument("--n12", type=int, default=60, help="12 MP images")
    ap.add_argument("--hops", type=int, default=300, help="round trips for the per-hop overhead")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a worker setting, e.g. --set preprocess_threads=3 (repeatable)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lensflow-bench-"))
    env = bench_env("b", 6099, work, ["stages=metadata", *args.set])  # the spine: EXIF only, no models
    cli = [sys.executable, "-m", "lensflow.streams.cli"]
    subprocess.run(cli + ["stack", "up"], env=env, check=True)

    print("making synthetic photos ...", flush=True)
    sets = {}
    for label, (w, h), n in [x for x in [("2 MP within the cap", (1600, 1200), args.n2), ("2 MP over the cap", (1632, 1224), args.n2),
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
    run_dir = ROOT / ".lensflow" / "stack" / "run"
    with bench_worker(env, 6099, work) as worker:
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
        for label, files in sets.items():
            floor = floor_ms(files)
            before = cpu_seconds(pids)
            recs = run_pipeline(env, files, 600)
            after = cpu_seconds(pids)
            figures[label] = report(label, files, recs, floor)
            cpu = {k: (after[k] - before[k]) * 1000 / len(recs) for k in pids}
            figures[label]["cpu_ms_per_image"] = cpu
            print("  cpu per image   " + ", ".join(f"{k} {v:.1f} ms" for k, v in cpu.items()))
        hops = hop_overhead_ms(env, env["LENSFLOW_TOPIC_PREFIX"] + "analysis.metadata", args.hops)
        figures["hop_p50_ms"], figures["hop_p95_ms"] = statistics.median(hops), pct(hops, 95)
        print(f"\n== one Kafka+Avro hop (encode, produce acks=all, consume, decode): p50 {figures['hop_p50_ms']:.2f} ms, "
              f"p95 {figures['hop_p95_ms']:.2f} ms")
        figures["worker_rss_mib"] = rss_mib(worker.pid)
        print(f"   worker RSS {figures['worker_rss_mib']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


def _cleanup(env: dict) -> None:
    from cassandra.cluster import Cluster
    from confluent_kafka.admin import AdminClient

    cluster = Cluster(["127.0.0.1"], protocol_version=5)
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {env['LENSFLOW_CASSANDRA_KEYSPACE']}", timeout=60)
    finally:
        cluster.shutdown()
    admin = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
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
