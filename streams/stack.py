"""`lensflow stack up|down|status`: the local Kafka + Cassandra, started by deploy/local/stack.sh
(jars from Maven Central, cached under LENSFLOW_CACHE_DIR), then made ready for lensflow: every
topology topic created (idempotently) and the CQL schema applied. Qdrant needs nothing started: local
mode lives in DATA_DIR/qdrant, opened by the worker that runs the join.

deploy/local ships inside the package as ``lensflow.deploy.local`` (pyproject maps the folder; one copy),
so an installed wheel finds the script with ``importlib.resources`` as a checkout does.
"""

from __future__ import annotations

import os
import subprocess
from importlib import resources, util
from pathlib import Path
from urllib.parse import urlsplit

from .kafka import ensure_topics, wait_for_kafka
from .security import cassandra_options
from .settings import Settings
from .store import connect_cassandra, cql_statements, wait_for_cassandra


class StackError(RuntimeError):
    pass


#: The package that holds deploy/local (stack.sh, its Maven poms and config templates, the registry script).
PACKAGE = "lensflow.deploy.local"


def package_file(package: str, name: str) -> Path:
    """The file ``name`` of a data package (a folder of package data such as deploy/local) as installed, found
    with ``importlib.resources``. Raises FileNotFoundError when the package or the file is not there."""

    try:
        path = Path(str(resources.files(package).joinpath(name)))
    except ModuleNotFoundError:
        raise FileNotFoundError(f"no package {package}") from None
    except NotADirectoryError:
        # an editable install (pip install -e) lists a placeholder beside the folder in a data package's
        # __path__, which importlib.resources refuses on Python 3.11: look in the folders it lists
        spec = util.find_spec(package)
        found = [Path(p) / name for p in (spec.submodule_search_locations or []) if (Path(p) / name).is_file()]
        path = found[0] if found else Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{package} holds no {name}")
    return path


def script_path(name: str = "stack.sh") -> Path:
    """A file of deploy/local as installed (in an editable install, the checkout's own folder)."""
    try:
        return package_file(PACKAGE, name)
    except FileNotFoundError as exc:
        raise StackError(f"this lensflow was installed without its local stack files ({exc}): reinstall it") from None


def _env(settings: Settings) -> dict[str, str]:
    first = settings.kafka_bootstrap.split(",")[0]
    port = urlsplit(f"//{first}").port or 9092
    env = dict(os.environ)
    env.update(LENSFLOW_DATA_DIR=str(settings.stack_path), LENSFLOW_CACHE_DIR=str(settings.cache_path),
               LENSFLOW_KAFKA_PORT=str(port), LENSFLOW_CQL_PORT=str(settings.cassandra_port),
               LENSFLOW_STACK_TIMEOUT=str(settings.stack_timeout_s))
    return env


def script(settings: Settings, command: str, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script_path()), command], env=_env(settings), text=True,
                          capture_output=capture, check=False)


def apply_cql(settings: Settings) -> int:
    cluster, session = connect_cassandra(settings.cassandra_hosts, settings.cassandra_port, timeout=30,
                                         **cassandra_options(settings))
    try:
        statements = cql_statements(settings.cassandra_keyspace, settings.cassandra_replication,
                                    settings.cassandra_replication_strategy)
        for stmt in statements:
            session.execute(stmt, timeout=60)
        return len(statements)
    finally:
        cluster.shutdown()


def prepare(settings: Settings, log=print, topics: bool = True, cql: bool = True, timeout_s: float | None = None) -> None:
    """Make Kafka and Cassandra ready for lensflow: every topic created, the CQL schema applied (idempotent)."""
    timeout_s = timeout_s or settings.stack_timeout_s
    if topics:
        wait_for_kafka(settings, timeout_s)
        created = ensure_topics(settings)
        log(f"topics: {len(created)} created" if created else "topics: all present")
    if cql:
        wait_for_cassandra(settings.cassandra_hosts, settings.cassandra_port, timeout_s, **cassandra_options(settings))
        n = apply_cql(settings)
        log(f"cassandra schema: {n} statements applied to keyspace {settings.cassandra_keyspace}")


def up(settings: Settings, log=print) -> None:
    proc = script(settings, "up")
    if proc.returncode != 0:
        raise StackError(f"local stack did not start (exit {proc.returncode}); see the message above")
    prepare(settings, log)


def down(settings: Settings) -> None:
    proc = script(settings, "down")
    if proc.returncode != 0:
        raise StackError(f"local stack did not stop cleanly (exit {proc.returncode})")


def status(settings: Settings) -> int:
    return script(settings, "status").returncode
