"""Running the read service: on a process of its own (``lensflow api``), or on a thread of the worker
that owns Qdrant's local mode, with an event loop of its own (never the stream's)."""

from __future__ import annotations

import asyncio
import threading

import structlog
import uvicorn

from lensflow.streams.settings import Settings

from .app import create_app
from .service import OwnStores, ReadService, SharedStores

log = structlog.get_logger("lensflow.api")


def _config(settings: Settings, service: ReadService) -> uvicorn.Config:
    return uvicorn.Config(create_app(settings, service), host=settings.api_host, port=settings.api_port,
                          log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5,
                          server_header=False)


def serve(settings: Settings) -> None:
    """The read service on this process, over stores of its own, until SIGINT/SIGTERM."""
    service = ReadService(settings, OwnStores(settings))
    server = uvicorn.Server(_config(settings, service))
    log.info("api_listening", url=url_of(settings))
    try:
        server.run()
    finally:
        service.close()


class InWorker:
    """The read service on a thread of a worker, over the worker's stores (``ctx.stores``) and decode
    budget (``ctx``). ``start`` returns once the port is bound (or raises); ``stop`` asks it to end."""

    def __init__(self, settings: Settings, ctx):
        self.settings = settings
        self.service = ReadService(settings, SharedStores(ctx.stores), budget_ctx=ctx)
        self.server = uvicorn.Server(_config(settings, self.service))
        self.thread = threading.Thread(target=self._run, name="api", daemon=True)
        self.failed: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve())
        except BaseException as exc:  # noqa: BLE001  (reported by start)
            self.failed = exc
        finally:
            self.service.close()

    def start(self, timeout_s: float = 30.0) -> None:
        self.thread.start()
        for _ in range(int(timeout_s / 0.05)):
            if self.server.started or not self.thread.is_alive():
                break
            self.thread.join(0.05)
        if not self.server.started:
            raise RuntimeError(f"the read service could not listen on {url_of(self.settings)}"
                               + (f": {self.failed}" if self.failed else ""))
        log.info("api_listening", url=url_of(self.settings), in_worker=True)

    def stop(self) -> None:
        self.server.should_exit = True


def url_of(settings: Settings) -> str:
    host = settings.api_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}"
