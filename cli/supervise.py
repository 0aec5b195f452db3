"""Process supervision for the CLI: pid files, liveness, readiness polling, the web port check, and
glibc's malloc arenas, for the worker and the read service started in the background."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable


from lensflow.streams.settings import Settings

from .core import CliError


def pidfile(s: Settings, name: str) -> Path:
    """The pid file of a background process (``worker``, ``api``)."""
    return s.data_path / "run" / f"{name}.pid"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def running(s: Settings, name: str) -> int | None:
    """The pid of the background process ``name`` when it is alive, else None."""
    try:
        pid = int(pidfile(s, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if alive(pid) else None


def stop(s: Settings, name: str, grace_s: float) -> int | None:
    """Stop the background process ``name``: SIGTERM, then SIGKILL after ``grace_s``; its pid, or None
    when none was running."""
    pid = running(s, name)
    if pid is None:
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while running(s, name) is not None:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    pidfile(s, name).unlink(missing_ok=True)
    return pid


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
    exited = (lambda: proc.poll() is not None) if isinstance(proc, subprocess.Popen) else (lambda: proc is not None and not alive(proc))
    outcome = poll_ready(url, timeout_s, exited)
    if outcome == "exited":
        raise CliError(f"worker exited during start-up; see {s.data_path / 'logs' / 'worker.log'}")
    if outcome == "timeout":
        raise CliError(f"worker not ready after {timeout_s:.0f}s ({url}); see {s.data_path / 'logs' / 'worker.log'}")


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
