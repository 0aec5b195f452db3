"""A memory budget for work that runs concurrently in threads (preprocess's decodes).

Each decode reserves its estimated peak (``agents.preprocess.decode_cost``, made from the header
before any pixel is decoded) for as long as it runs; reservations that do not fit in what remains
wait for earlier ones to finish. So N images decoding at once never need more than the budget,
however the batch is made up, and one image that could never fit fails at once with
``over_memory_budget`` instead of taking the worker down (and crash-looping on the same batch).

Waiting is first come, first served: a large reservation at the head of the queue is not starved
by a stream of small ones behind it (they wait for it), so every reservation that fits in the
whole budget is admitted once the reservations ahead of it are released.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Iterator

import structlog

from .errors import ErrorCode, StageFailure

log = structlog.get_logger("lensflow.budget")

_MIB = 2 ** 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter


def pin_malloc_mmap_threshold(nbytes: int = _MIB) -> bool:
    """Serve every allocation of ``nbytes`` or more with its own mmap, returned to the OS when freed
    (glibc; process-wide; False where it could not be set, e.g. another libc).

    glibc's default threshold rises to the size of the largest block freed (up to 32 MiB): after the
    first decode, Pillow's 16 MiB image blocks come from per-thread arenas, which keep freed memory
    resident. Measured with 8 threads preprocessing 24 bombs (4-16 MP PNGs) under a 512 MiB budget:
    peak RSS +717 MiB (+365 MiB still resident after) with the default, +398-426 MiB (+19 MiB after)
    pinned at 1 MiB, in the same wall time. Without it the budget bounds live memory, not RSS.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError, TypeError):
        return False


class MemoryBudget:
    """``total`` bytes shared by the threads of one worker; ``reserve()`` admits against it.

    Creating one pins malloc's mmap threshold (``pin_malloc_mmap_threshold``), so that memory a
    decode frees leaves the process and the budget bounds RSS; ``malloc_mmap_threshold=None``
    leaves the allocator alone."""

    def __init__(self, total: int, setting: str = "LENSFLOW_DECODE_MEMORY_MB",
                 malloc_mmap_threshold: int | None = _MIB):
        if total <= 0:
            raise ValueError(f"a memory budget needs a positive total, not {total}")
        if malloc_mmap_threshold is not None:
            pin_malloc_mmap_threshold(malloc_mmap_threshold)
        self.total = int(total)
        self.setting = setting  # named in the refusal, so the operator knows what to raise
        self._used = 0
        self._queue: deque[object] = deque()  # waiting reservations, first come first served
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    @property
    def available(self) -> int:
        with self._cond:
            return self.total - self._used

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    @contextmanager
    def reserve(self, nbytes: int, timeout_s: float | None = 30.0, what: str = "image") -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the duration of the ``with`` block.

        Blocks until ``nbytes`` fit in what remains (and every earlier waiter was admitted).
        ``nbytes`` over the whole budget raises ``StageFailure(over_memory_budget)`` at once: it
        could never be admitted. ``timeout_s`` never fails the image (it fits, so it is admitted
        once the decodes ahead of it finish): each ``timeout_s`` of waiting is logged as
        ``decode_budget_wait``, so a stalled budget is visible; ``None`` waits silently.
        """
        nbytes = max(0, int(nbytes))
        if nbytes > self.total:
            raise StageFailure(ErrorCode.OVER_MEMORY_BUDGET,
                               f"{what} needs ~{nbytes / _MIB:.0f} MiB to decode, over the "
                               f"{self.total / _MIB:.0f} MiB budget ({self.setting})")
        self._acquire(nbytes, timeout_s, what)
        try:
            yield
        finally:
            with self._cond:
                self._used -= nbytes
                self._cond.notify_all()

    def _acquire(self, nbytes: int, timeout_s: float | None, what: str) -> None:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            started = time.monotonic()
            try:
                while self._queue[0] is not ticket or self._used + nbytes > self.total:
                    if not self._cond.wait(timeout_s) and timeout_s is not None:
                        log.warning("decode_budget_wait", what=what, needs_mib=round(nbytes / _MIB, 1),
                                    used_mib=round(self._used / _MIB, 1), total_mib=round(self.total / _MIB, 1),
                                    waiting=len(self._queue), waited_s=round(time.monotonic() - started, 1))
                self._used += nbytes
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit too
