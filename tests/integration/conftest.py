"""Integration fixtures: the real local stack (Kafka + Cassandra started by lensflow's own scripts),
real lensflow workers as subprocesses, and an isolated namespace per test module (topic prefix,
keyspace, consumer group, data dir), so runs never see each other's data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lensflow.cli.supervise import poll_ready

ROOT = Path(__file__).resolve().parents[2]
LENSFLOW = [sys.executable, "-m", "lensflow.cli"]
STACK_DIR = ROOT / ".lensflow" / "stack"

pytestmark = pytest.mark.integration


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LENSFLOW_")}
    env["LENSFLOW_STACK_DIR"] = str(STACK_DIR)
    env["LENSFLOW_DATA_DIR"] = str(ROOT / ".lensflow")
    return env


def run(args, env, check=True, timeout=600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(LENSFLOW + list(args), env=env, text=True, capture_output=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"lensflow {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def stack():
    """Start the real Kafka and Cassandra (idempotent); stop them afterwards only if this session started them."""
    env = base_env()
    was_running = run(["stack", "status"], env, check=False).returncode == 0
    t0 = time.monotonic()
    up = subprocess.run(LENSFLOW + ["stack", "up"], env=env, text=True, timeout=900)
    assert up.returncode == 0, "lensflow stack up failed (see output above)"
    print(f"\nstack up in {time.monotonic() - t0:.0f}s", file=sys.stderr)
    yield env
    if not was_running and not os.environ.get("LENSFLOW_KEEP_STACK"):
        run(["stack", "down"], env, check=False)


@pytest.fixture(scope="session")
def models(stack):
    """Every model file, prepared once (idempotent; cached in ~/.cache/lensflow)."""
    run(["models", "prepare", "yunet-sface", "efficientnet-lite0", "minilm-l6-v2", "rapidocr", "coco-detector", "open-nsfw",
         "geonames"], stack,
        timeout=1500)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Namespace:
    """One isolated lensflow deployment on the shared stack."""

    def __init__(self, stack_env: dict, data_dir: Path, **settings):
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.data_dir = data_dir
        self.env = dict(stack_env)
        self.env.update({
            "LENSFLOW_DATA_DIR": str(data_dir),
            "LENSFLOW_TOPIC_PREFIX": f"t{tag}.",
            "LENSFLOW_CASSANDRA_KEYSPACE": f"t_{tag}",
            "LENSFLOW_APP_ID": f"lensflow-t{tag}",
            "LENSFLOW_WEB_PORT": str(free_port()),
            "LENSFLOW_API_PORT": str(free_port()),  # the read service, served by the worker that owns Qdrant
            "LENSFLOW_LOG_JSON": "true",
            # EXIF only unless a test asks for more (per upload with --stages, or with stages=…): fast and model-free
            "LENSFLOW_STAGES": "metadata",
        })
        self.env.update({f"LENSFLOW_{k.upper()}": str(v) for k, v in settings.items()})
        self.keyspace = self.env["LENSFLOW_CASSANDRA_KEYSPACE"]
        self.prefix = self.env["LENSFLOW_TOPIC_PREFIX"]
        self.worker: subprocess.Popen | None = None
        self.started: list[subprocess.Popen] = []  # every worker started, for close()
        self.log_path = data_dir / "worker.log"
        self._session = None

    def topic(self, name: str) -> str:
        return self.prefix + name

    @property
    def api(self) -> str:
        """The read service's base URL (served by this namespace's worker)."""
        return f"http://127.0.0.1:{self.env['LENSFLOW_API_PORT']}"

    def token(self, user: str, ttl: str = "1h", *scopes: str) -> str:
        """A bearer token of ``user`` minted by the CLI from this namespace's local secret."""
        args = ["token", "issue", "--user", user, "--ttl", ttl] + [a for s in scopes for a in ("--scope", s)]
        return self.cli(*args).stdout.strip()

    def cli(self, *args, check=True, timeout=600):
        return run(args, self.env, check=check, timeout=timeout)

    # workers ----------------------------------------------------------------------------------
    def start_worker(self, timeout: float = 180.0, stages: str | None = None, address_space: int | None = None) -> None:
        """Start a worker and wait until it is ready. ``address_space``: a hard RLIMIT_AS in bytes (with
        glibc's malloc arenas capped, so the limit bounds memory actually used, not reserved). A worker
        this namespace already runs is stopped first (one worker per namespace: a second would be
        orphaned, still consuming, when the first handle is overwritten)."""
        self.stop_worker()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env, preexec = self.env, None
        if address_space is not None:
            import resource

            env = {**self.env, "MALLOC_ARENA_MAX": "2"}

            def preexec():
                resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        self.worker = subprocess.Popen(LENSFLOW + ["worker"] + (["--stages", stages] if stages else []), env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec)
        self.started.append(self.worker)
        url = f"http://127.0.0.1:{self.env['LENSFLOW_WEB_PORT']}/readyz"
        outcome = poll_ready(url, timeout, lambda: self.worker.poll() is not None)
        if outcome == "exited":
            raise AssertionError(f"worker exited with {self.worker.returncode}:\n{self.log_tail()}")
        if outcome == "timeout":
            raise AssertionError(f"worker not ready after {timeout}s:\n{self.log_tail()}")

    def stop_worker(self, sig=signal.SIGTERM, timeout: float = 60.0) -> None:
        if self.worker is None or self.worker.poll() is not None:
            self.worker = None
            return
        self.worker.send_signal(sig)
        try:
            self.worker.wait(timeout)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait(10)
        self.worker = None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no worker log)"

    # stores -----------------------------------------------------------------------------------
    @property
    def cql(self):
        if self._session is None:
            from cassandra.cluster import Cluster
            from cassandra.policies import ConstantReconnectionPolicy, RoundRobinPolicy

            # reconnect every second: some tests stop and restart Cassandra under this session
            self._cluster = Cluster(["127.0.0.1"], port=int(self.env.get("LENSFLOW_CASSANDRA_PORT", 9042)), protocol_version=5,
                                    load_balancing_policy=RoundRobinPolicy(),
                                    reconnection_policy=ConstantReconnectionPolicy(1.0, max_attempts=None))
            self._session = self._cluster.connect(self.keyspace)
        return self._session

    def close(self) -> None:
        self.stop_worker()
        for proc in self.started:  # any worker a test started beside the namespace's own: none outlives it
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self._session is not None:
            try:
                self._session.execute(f"DROP KEYSPACE IF EXISTS {self.keyspace}", timeout=60)
            finally:
                self._cluster.shutdown()
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": "127.0.0.1:9092"})
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.prefix) or t.startswith(self.env["LENSFLOW_APP_ID"])]
        if mine:
            for fut in admin.delete_topics(mine, request_timeout=30).values():
                try:
                    fut.result()
                except Exception:
                    pass


@pytest.fixture(scope="module")
def namespace(stack, tmp_path_factory):
    ns = Namespace(stack, tmp_path_factory.mktemp("lensflow"), join_timeout_s=4, join_tick_interval_s=1)
    ns.cli("init")
    yield ns
    ns.close()
