"""`lensflow stack up|down|status` and `lensflow init`: the local Kafka + Cassandra, and the topics and CQL
schema on configured services."""

from __future__ import annotations

import json
import time

import typer


from .app import app, stack_app
from .core import err, friendly, settings


@stack_app.command("up")
@friendly
def stack_up(as_json: bool = typer.Option(False, "--json", help="Print {ready, seconds, log} as JSON on stdout "
                                          "(progress stays on stderr).")) -> None:
    """Start Kafka and Cassandra on 127.0.0.1 (idempotent), create the topics, apply the CQL schema."""
    from lensflow.streams import stack

    t0 = time.monotonic()
    s = settings()
    stack.up(s, log=lambda m: err.print(f"lensflow: {m}", highlight=False))
    seconds = time.monotonic() - t0
    err.print(f"lensflow: stack ready in {seconds:.0f}s", highlight=False)
    if as_json:
        print(json.dumps({"ready": True, "seconds": round(seconds, 1), "data_dir": str(s.stack_path)}))


@stack_app.command("down")
@friendly
def stack_down() -> None:
    """Stop Kafka and Cassandra (idempotent). Data stays in DATA_DIR/stack."""
    from lensflow.streams import stack

    stack.down(settings())


@stack_app.command("status")
@friendly
def stack_status(as_json: bool = typer.Option(False, "--json", help="One JSON object: service -> state, pid, port, log.")) -> None:
    """Each service, its pid, port and log file. Exit 3 when one is not running."""
    from lensflow.streams import stack

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
         timeout: float = typer.Option(120.0, help="Seconds to wait for Kafka / Cassandra to answer."),
         as_json: bool = typer.Option(False, "--json", help="Print each step's line as a JSON object on stdout.")) -> None:
    """Create the topics and apply the CQL schema on the configured Kafka and Cassandra (idempotent).

    `stack up` does this for the local stack; Kubernetes runs it as a Helm hook Job.
    """
    from lensflow.streams.stack import prepare

    steps: list[str] = []

    def log(message: str) -> None:
        steps.append(message)
        err.print(f"lensflow: {message}", highlight=False)

    t0 = time.monotonic()
    prepare(settings(), log=log, topics=not cql_only, cql=not topics_only, timeout_s=timeout)
    if as_json:
        print(json.dumps({"ready": True, "seconds": round(time.monotonic() - t0, 1), "steps": steps}))
