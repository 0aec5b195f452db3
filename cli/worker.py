"""`lensflow worker` and `lensflow api`: run a stream worker (hosting the read service when it owns
Qdrant's local mode), or the read service on its own."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from lensflow.streams.settings import Settings

from .app import app
from .core import CliError, err, friendly, out, settings
from .client import api_url
from .models import preparers
from .supervise import check_web_port, limit_malloc_arenas, pidfile, poll_ready, running, wait_ready
from .supervise import stop as stop_process

#: seconds a stopping worker gets to finish its batch in hand before SIGKILL; the read service's
WORKER_STOP_S = 60.0
API_STOP_S = 20.0


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
        from lensflow.streams.topology import RUNNABLE, split_problem

        unknown = [x for x in chosen if x not in RUNNABLE]
        if unknown:
            raise CliError(f"cannot run stage(s) {unknown}; runnable: {', '.join(RUNNABLE)}")
        problem = split_problem(chosen, s.qdrant_url)
        if problem:
            raise CliError(problem)
    if not stop:
        from lensflow.streams.storage import missing_backend

        problem = missing_backend(s.roots)  # an optional backend (s3fs, gcsfs): say which extra, before starting
        if problem:
            raise CliError(problem)
    if stop:
        pid = stop_process(s, "worker", WORKER_STOP_S)
        err.print("lensflow: no background worker running" if pid is None else f"lensflow: worker {pid} stopped")
        return
    if background:
        pid = running(s, "worker")
        if pid is None:
            check_web_port(s.web_host, s.web_port)  # else wait_ready could hear another worker's /readyz
        if pid is not None:
            err.print(f"lensflow: worker already running (pid {pid})")
            wait_ready(s, ready_timeout, pid)
            return
        ensure_models(s, chosen)  # here, where its progress is seen; the detached worker finds them ready
        logs = s.data_path / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pidfile(s, "worker").parent.mkdir(parents=True, exist_ok=True)
        cmd = ([sys.executable, "-m", "lensflow.cli", "worker"] + (["--stages", stages] if stages else [])
               + (["--group", group] if group else []))
        with open(logs / "worker.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        pidfile(s, "worker").write_text(str(proc.pid))
        wait_ready(s, ready_timeout, proc)
        err.print(f"lensflow: worker {proc.pid} ready (log: {logs / 'worker.log'}; stop: lensflow worker --stop)")
        return
    ensure_models(s, chosen)
    run_worker(s, chosen)


def models_for(s: Settings, stages: list[str] | None) -> list[str]:
    """The model names (``lensflow models prepare`` names) the analysis stages of a worker need: a
    stage's own, and those of the stages it computes inline (preprocess computes metadata: its places)."""
    from lensflow.builders.registry import models_for_stages

    from lensflow.streams.topology import AVAILABLE_STAGES, STAGES

    if stages is None:
        chosen = list(AVAILABLE_STAGES)
    else:
        chosen = [x for x in AVAILABLE_STAGES if x in stages or STAGES[x].inside in stages]
        chosen.sort(key=lambda x: stages.index(x if x in stages else STAGES[x].inside))
    return models_for_stages(chosen, s)


def ensure_models(s: Settings, stages: list[str] | None, log: Path | None = None) -> list[str]:
    """Prepare the missing model files of ``stages`` (every stage when None) with progress on stderr,
    unless LENSFLOW_PREPARE_MODELS=false. A model that cannot be prepared (a missing tool, no network)
    is reported in one line naming the fix; the worker still starts, and that model's stages report
    ``model_unavailable``. With ``log``, the progress goes to that file and stderr gets two lines per
    model prepared (its start, naming the log, and its time). Returns the models that failed."""
    if not s.prepare_models:
        return []
    from lensflow.streams.models import ModelCache, ModelError

    cache = ModelCache(s.models_path)
    failed = []
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    for name, fn in preparers(models_for(s, stages)).items():
        t0 = time.monotonic()
        lines: list[str] = []

        def report(message: str, n: str = name) -> None:
            if "up to date" in message:  # quiet when nothing is to do
                return
            if log is None:
                err.print(f"lensflow: preparing {n}: {message}", highlight=False)
            else:
                if not lines:
                    err.print(f"lensflow: preparing {n} (progress in {log})", highlight=False)
                with open(log, "a", encoding="utf-8") as fh:
                    fh.write(f"{time.strftime('%H:%M:%S')} {n}: {message}\n")
            lines.append(message)

        try:
            fn(cache, report)
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


def hosts_api(s: Settings, wanted: set[str]) -> bool:
    """Whether a worker opening the stores ``wanted`` serves the read service on a thread of its own:
    ``LENSFLOW_API_IN_WORKER``, by default when it owns Qdrant's local mode (one process only)."""
    if not {"cassandra", "qdrant"} <= set(wanted):
        return False
    return s.api_in_worker if s.api_in_worker is not None else s.qdrant_url is None


def run_worker(s: Settings, stages: list[str] | None) -> None:
    from faust.worker import Worker

    from lensflow.streams.app import build
    from lensflow.streams.observability import configure_logging

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
        if running(s, "worker") is None:
            raise CliError("with Qdrant's local mode (LENSFLOW_QDRANT_URL unset) the read service runs inside the worker "
                           "that owns Qdrant: start it with `lensflow worker --background`, or set LENSFLOW_QDRANT_URL "
                           "to run `lensflow api` on its own")
        outcome = poll_ready(f"{url}/readyz", ready_timeout if background else 5.0, lambda: running(s, "worker") is None)
        if outcome != "ready":
            raise CliError(f"the worker runs but its read service is not ready at {url} ({outcome}); see "
                           f"{s.data_path / 'logs' / 'worker.log'}")
        out.print(f"the read service runs inside the worker: {url}", highlight=False)
        return
    if stop:
        pid = stop_process(s, "api", API_STOP_S)
        err.print("lensflow: no background read service running" if pid is None else f"lensflow: read service {pid} stopped")
        return
    if background:
        if (pid := running(s, "api")) is not None:
            err.print(f"lensflow: read service already running (pid {pid}): {url}")
            return
        logs = s.data_path / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pidfile(s, "api").parent.mkdir(parents=True, exist_ok=True)
        with open(logs / "api.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "lensflow.cli", "api"], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pidfile(s, "api").write_text(str(proc.pid))
        outcome = poll_ready(f"{url}/readyz", ready_timeout, lambda: proc.poll() is not None)
        if outcome != "ready":
            raise CliError(f"read service {'exited' if outcome == 'exited' else 'not ready'} ({url}); see {logs / 'api.log'}")
        err.print(f"lensflow: read service {proc.pid} ready at {url} (log: {logs / 'api.log'}; stop: lensflow api --stop)")
        return
    from lensflow.api.server import serve
    from lensflow.streams.observability import configure_logging

    configure_logging(s.log_level, s.log_json)
    serve(s)
