"""Faults injected into a real lensflow worker (or CLI) process, named in ``LENSFLOW_TEST_FAULTS``
(comma-separated):

* ``join-once``: one transient failure, at its 3rd call, of each store call the join makes
  (``CassandraStore.current``, ``.current_many``, ``.same_bytes``, ``.write``, ``.mark_notified``; ``QdrantStore.upsert_images``,
  ``.near_duplicates``): a Cassandra ``OperationTimedOut`` or a Qdrant ``ResponseHandlingException``
  raised *instead of* the call (the store never sees it), as a timeout does;
* ``publish-once``: in each stage's first delivery of two records or more (the join: one that announces an
  image), one record's delivery (not an ``images.analyzed`` one where there is another) fails (``RequestTimedOutError``) without the record being sent; the rest go to the broker;
* ``storage``: the ``faulty://`` fsspec scheme, the local filesystem whose reads fail with ``EIO``
  while the file named by ``LENSFLOW_TEST_STORAGE_DOWN`` exists (writes always work).

Each injected fault is written to stderr as one ``FAULT_INJECTED <name>`` line, so a test can check it
happened. Nothing here stands in for Kafka, Cassandra or Qdrant: every other call reaches them."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import threading

_lock = threading.Lock()
_calls: dict[str, int] = {}
_fired: set[str] = set()


def _due(name: str, at: int) -> bool:
    with _lock:
        if name in _fired:
            return False
        _calls[name] = _calls.get(name, 0) + 1
        if _calls[name] < at:
            return False
        _fired.add(name)
    print(f"FAULT_INJECTED {name}", file=sys.stderr, flush=True)
    return True


def _fail_once(cls, method: str, make_exc, at: int = 3) -> None:
    original = getattr(cls, method)
    name = f"{cls.__name__}.{method}"

    async def wrapper(self, *args, **kwargs):
        if _due(name, at):
            raise make_exc()
        return await original(self, *args, **kwargs)

    setattr(cls, method, wrapper)


def _join_once() -> None:
    from cassandra import OperationTimedOut
    from qdrant_client.http.exceptions import ResponseHandlingException

    from lensflow.streams.store import CassandraStore, QdrantStore

    for method in ("current", "current_many", "same_bytes", "write", "mark_notified"):
        _fail_once(CassandraStore, method, lambda: OperationTimedOut("injected: no answer in time"))
    for method in ("upsert_images", "near_duplicates"):
        _fail_once(QdrantStore, method, lambda: ResponseHandlingException(TimeoutError("injected: no answer in time")))


def _publish_once() -> None:
    from aiokafka.errors import RequestTimedOutError

    from lensflow.streams.runner import Runner

    original = Runner.publish

    async def publish(self, outputs):
        # the join's first delivery that announces an image (its other records would be repeated with it)
        eligible = len(outputs) >= 2 and (self.stage.name != "join" or any(o.record_name == "ImageAnalyzed" for o in outputs))
        if eligible and _due(f"publish.{self.stage.name}", 1):
            real = self.ctx
            first = next((o for o in outputs if o.record_name != "ImageAnalyzed"), outputs[0])

            class OneFails:
                def __getattr__(self, attr):
                    return getattr(real, attr)

                async def produce(self, topic, image_id, record_name, record):
                    if record is first.record:
                        fut = asyncio.get_running_loop().create_future()
                        fut.set_exception(RequestTimedOutError("injected: delivery timed out"))
                        return fut
                    return await real.produce(topic, image_id, record_name, record)

            self.ctx = OneFails()
            try:
                return await original(self, outputs)
            finally:
                self.ctx = real
        return await original(self, outputs)

    Runner.publish = publish


def _storage() -> None:
    import fsspec
    from fsspec.implementations.local import LocalFileSystem
    from fsspec.utils import stringify_path

    flag = os.environ.get("LENSFLOW_TEST_STORAGE_DOWN", "")

    class FaultyFileSystem(LocalFileSystem):
        """The local filesystem under ``faulty://``: reads fail with EIO while ``flag`` exists."""

        protocol = ("faulty",)
        root_marker = "/"

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("auto_mkdir", True)
            super().__init__(*args, **kwargs)

        @classmethod
        def _strip_protocol(cls, path):
            path = stringify_path(path)
            if path.startswith("faulty://"):
                path = path[len("faulty://"):]
            return "/" + path.lstrip("/")

        def _open(self, path, mode="rb", **kwargs):
            if "r" in mode and flag and os.path.exists(flag):
                _due("storage.read", 1)  # reported once per process
                raise OSError(errno.EIO, "injected: storage not responding", path)
            return super()._open(path, mode=mode, **kwargs)

    fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)


_FAULTS = {"join-once": _join_once, "publish-once": _publish_once, "storage": _storage}


def install(spec: str) -> None:
    for name in filter(None, (s.strip() for s in spec.split(","))):
        _FAULTS[name]()


def env(root, *faults: str) -> dict:
    """The environment that makes a lensflow process load ``faults`` (``root``: the repository)."""
    here = os.path.join(str(root), "tests", "integration", "faults")
    path = os.pathsep.join([here, str(root)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return {"PYTHONPATH": path, "LENSFLOW_TEST_FAULTS": ",".join(faults)}
