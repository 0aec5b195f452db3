"""Helpers of the tests that prove lensflow's delivery promise (README, "The promise"): generated
photos, the local stack's processes, and the three sets a downstream consumer can check."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from lensflow.cli.supervise import poll_ready

from .conftest import LENSFLOW, Namespace, free_port
from .helpers import read_topic, wait_for

EVERY_STAGE = "objects,text,faces,scene,embedding,describe"


@contextlib.contextmanager
def fresh_namespace(stack, data_dir: Path, env: dict | None = None, **settings):
    """A namespace of its own for one test (its schema made with ``init``), closed afterwards: a 30 s
    join deadline ticked every second unless ``settings`` say otherwise; ``env``: more of the
    environment of its workers and commands (set before ``init``)."""
    ns = Namespace(stack, data_dir, **{"join_timeout_s": 30, "join_tick_interval_s": 1, **settings})
    ns.env.update(env or {})
    try:
        ns.cli("init")
        yield ns
    finally:
        ns.close()


def photos(d: Path, n: int, size=(800, 600), seed: int = 0) -> list[str]:
    """``n`` distinct photo-sized JPEGs (shapes on a gradient), fast to make and to analyse."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.randrange(size[0] - 100), rng.randrange(size[1] - 100)
            draw.ellipse((x, y, x + rng.randrange(30, 200), y + rng.randrange(30, 200)),
                         fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        draw.text((20, 20), f"photo {seed}-{i}", fill=(0, 0, 0))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        p = d / f"p{seed}-{i:04d}.jpg"
        p.write_bytes(buf.getvalue())
        paths.append(str(p))
    return paths


class Worker:
    """A worker process of its own (stage group), beside the namespace's, on a free port."""

    def __init__(self, ns, name: str, stages: str):
        self.name, self.port = name, free_port()
        env = {**ns.env, "LENSFLOW_WEB_PORT": str(self.port)}
        self.log = ns.data_dir / f"worker-{name}.log"
        self.proc = subprocess.Popen(LENSFLOW + ["worker", "--stages", stages], env=env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 240) -> None:
        outcome = poll_ready(f"http://127.0.0.1:{self.port}/readyz", timeout, lambda: self.proc.poll() is not None)
        assert outcome == "ready", f"worker {self.name}: {outcome}\n" + self.log.read_text(errors="replace")[-3000:]

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def submit(ns, user: str, files: list[str], stages: str | None = None) -> dict[str, str]:
    """Submit without waiting; image_id -> run_id of each submitted image."""
    args = ["submit", "--user", user, "--json"] + (["--stages", stages] if stages else []) + files
    proc = ns.cli(*args, timeout=600)
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            out[rec["image_id"]] = rec["run_id"]
    assert len(out) == len(set(files)), proc.stdout[-2000:]
    return out


def submit_waiting(ns, user: str, files: list[str], stages: str | None = None, timeout: float = 900) -> subprocess.Popen:
    """``submit --wait --json`` in the background (the test does things meanwhile)."""
    args = ["submit", "--user", user, "--wait", "--json", "--timeout", str(timeout)] + (["--stages", stages] if stages else []) + files
    return subprocess.Popen(LENSFLOW + args, env=ns.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results_of(proc: subprocess.Popen, timeout: float) -> dict[str, dict]:
    out, err = proc.communicate(timeout=timeout)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines, f"submit printed nothing (exit {proc.returncode}): {err[-2000:]}"
    return {r["image_id"]: r for r in lines}


def service_pid(env: dict, name: str) -> int:
    proc = subprocess.run(LENSFLOW + ["stack", "status"], env=env, text=True, capture_output=True, timeout=60)
    m = re.search(rf"^{name}\s+running\s+pid=(\d+)", proc.stdout + proc.stderr, re.M)
    assert m, f"{name} is not running:\n{proc.stdout}{proc.stderr}"
    return int(m.group(1))


def stored(ns) -> dict[str, tuple[str, str]]:
    """image_id -> (status, run_id) of every stored image. A read that times out is tried again (the
    tests poll this while a worker writes, and Cassandra on 2 shared cores can pause past the
    driver's 10 s default)."""
    from cassandra import OperationTimedOut, ReadTimeout

    for attempt in range(3):
        try:
            return {r.image_id: (r.status, r.run_id)
                    for r in ns.cql.execute("SELECT image_id, status, run_id FROM images", timeout=30)}
        except (OperationTimedOut, ReadTimeout):
            if attempt == 2:
                raise
            time.sleep(1)


def wait_stored(ns, ids, timeout: float, status: str | None = "complete") -> dict:
    ids = set(ids)

    def done():
        try:
            rows = stored(ns)
        except Exception as exc:  # the test's own session while Cassandra comes back
            if type(exc).__module__.startswith("cassandra"):
                return None
            raise
        ok = {i for i in ids if i in rows and (status is None or rows[i][0] == status)}
        return rows if ok == ids else None

    return wait_for(done, timeout, interval=1, message=f"{len(ids)} images stored" + (f" as {status}" if status else ""))


def analyzed_events(ns) -> list[tuple[str, str]]:
    """(image_id, run_id) of every images.analyzed event, duplicates included, read like a consumer."""
    return [(rec["image_id"], rec["run_id"]) for _, rec in read_topic(ns.topic("images.analyzed"), idle_s=3, max_s=120)]


def invalidated(ns) -> list[str]:
    return [rec["image_id"] for _, rec in read_topic(ns.topic("cache.invalidations"), idle_s=3, max_s=120)]


def dead_letters(ns) -> list[dict]:
    return [rec for _, rec in read_topic(ns.topic("images.deadletter"), idle_s=3, max_s=60)]


def log_has(ns, needle: str) -> bool:
    try:
        return needle in ns.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return False


def report(name: str, **figures) -> None:
    """Print a measured figure (run pytest with -s, or read the captured stderr)."""
    print(f"\nFIGURES {name}: " + json.dumps(figures, default=str), file=sys.stderr)
    path = Path(__file__).resolve().parents[2] / ".lensflow" / "figures.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"test": name, "at": time.time(), **figures}, default=str) + "\n")


def trace(ns, image_ids, stages=("objects", "text", "faces", "scene", "embedding")) -> str:
    """Where ``image_ids`` got to, for a failure message: each one's images.prepared records
    (partition, offset, run) against the worker group's committed offset on that partition, and the
    result records each stage published for it. Tells a lost input (committed past, no result) from a
    lost result (published, not joined)."""
    from confluent_kafka import Consumer, TopicPartition

    from .helpers import decode_single_object, topic_messages

    wanted = set(image_ids)

    def records(topic):
        return [(k, msg.partition(), msg.offset(), decode_single_object(msg.value()))
                for msg in topic_messages(topic, max_s=120) if (k := (msg.key() or b"").decode()) in wanted]

    prepared_topic = ns.topic("images.prepared")
    group = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": ns.env["LENSFLOW_APP_ID"],
                      "enable.auto.commit": False})
    try:
        meta = group.list_topics(prepared_topic, timeout=10).topics[prepared_topic]
        committed = {tp.partition: tp.offset for tp in
                     group.committed([TopicPartition(prepared_topic, p) for p in meta.partitions], timeout=10)}
    finally:
        group.close()
    lines = [f"committed offsets of {prepared_topic}: {committed}"]
    prepared = records(prepared_topic)
    results = {s: records(ns.topic(f"analysis.{s}")) for s in stages}
    for image_id in sorted(wanted):
        p = [(part, off, rec["run_id"][-8:]) for k, part, off, rec in prepared if k == image_id]
        r = {s: [(rec["run_id"][-8:], rec["status"]) for k, _, _, rec in results[s] if k == image_id] for s in stages}
        lines.append(f"{image_id}: prepared {p}; results {r}")
    return "\n".join(lines)
