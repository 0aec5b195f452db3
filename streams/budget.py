"""A memory budget for work that runs concurrently in threads (preprocess's decodes).

Each decode reserves its estimated peak (``agents.preprocess.decode_cost``, made from the header
before any pixel is decoded) for as long as it runs; reservations that do not fit in what remains
wait for earlier ones to finish. So N images decoding at once never need more than the budget,
however the batch is made up, and one image that could never fit fails at once with
``over_memory_budget`` instead of taking the worker down (and crash-looping on the same batch).

Waiting is first come, first served: a large reservation at the head of the queue is not starved
by a stream of small ones behind it (they wait for it), so every reservation that fits in the
whole budget is admitted once the reservations ahead of it are released.

One budget per worker process (``decode_budget``), shared by every stage that decodes pixels
(preprocess's originals, the model stages' derivatives), and one wall-clock limit on every decode
(``run_within``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import structlog
from PIL import Image

from .errors import ErrorCode, StageFailure

log = structlog.get_logger("lensflow.budget")

_MIB = 2 ** 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter
T = TypeVar("T")

#: the deadline (time.monotonic()) of the decode the current thread runs for ``run_within``, if any
_decode = threading.local()


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
    leaves the allocator alone. ``cpu_timed``: the worker's ``Metrics.cpu_timed``, with which the
    decode threads ``run_within`` starts count their CPU time as their stage's (``account``)."""

    def __init__(self, total: int, setting: str = "LENSFLOW_DECODE_MEMORY_MB",
                 malloc_mmap_threshold: int | None = _MIB, cpu_timed: Callable[..., Any] | None = None):
        if total <= 0:
            raise ValueError(f"a memory budget needs a positive total, not {total}")
        if malloc_mmap_threshold is not None:
            pin_malloc_mmap_threshold(malloc_mmap_threshold)
        self.total = int(total)
        self.setting = setting  # named in the refusal, so the operator knows what to raise
        self.cpu_timed = cpu_timed
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

    def account(self, stage: str) -> Callable[..., Any] | None:
        """How a decode thread counts its CPU time as ``stage``'s (``run_within(account=...)``), or None."""
        return None if self.cpu_timed is None else functools.partial(self.cpu_timed, stage)

    @contextmanager
    def reserve(self, nbytes: int, timeout_s: float | None = 30.0, what: str = "image") -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the duration of the ``with`` block.

        Blocks until ``nbytes`` fit in what remains (and every earlier waiter was admitted).
        ``nbytes`` over the whole budget raises ``StageFailure(over_memory_budget)`` at once: it
        could never be admitted. ``timeout_s`` never fails the image (it fits, so it is admitted
        once the decodes ahead of it finish): each ``timeout_s`` of waiting is logged as
        ``decode_budget_wait``, so a stalled budget is visible; ``None`` waits silently.
        In a decode thread of ``run_within``, a reservation not admitted by that decode's deadline
        raises ``StageFailure(decode_timeout)`` instead: its caller has given up on it, so it must
        not take memory, or CPU, from the decodes still awaited.
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
        deadline = getattr(_decode, "deadline", None)
        with self._cond:
            self._queue.append(ticket)
            started = time.monotonic()
            try:
                while self._queue[0] is not ticket or self._used + nbytes > self.total:
                    wait = timeout_s
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise StageFailure(ErrorCode.DECODE_TIMEOUT,
                                               f"{what} was not admitted to the decode budget within its wall-clock "
                                               f"limit (LENSFLOW_DECODE_TIMEOUT_S): never decoded")
                        wait = left if wait is None else min(wait, left)
                    if not self._cond.wait(wait) and timeout_s is not None and wait == timeout_s:
                        log.warning("decode_budget_wait", what=what, needs_mib=round(nbytes / _MIB, 1),
                                    used_mib=round(self._used / _MIB, 1), total_mib=round(self.total / _MIB, 1),
                                    waiting=len(self._queue), waited_s=round(time.monotonic() - started, 1))
                self._used += nbytes
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit too


def run_within(timeout_s: float | None, fn: Callable[..., T], *args: Any, what: str = "decode",
               account: Callable[..., Any] | None = None) -> T:
    """``fn(*args)`` in a thread of its own, waited for ``timeout_s`` seconds at most (None: no limit,
    run in the calling thread): past it, ``StageFailure(decode_timeout)``, and the caller goes on.

    Python cannot interrupt a decode running in C (Pillow's decoders, zlib, libjpeg), nor any other
    thread, so the decode is *abandoned*, not stopped: its thread runs to the end in the background
    and only then frees what it allocated, the memory budget it was admitted against included. What
    bounds the harm of an abandoned decode is the rest: the pixel and frame caps it passed and its
    reservation of the budget (it cannot take more than it was admitted for, and the decodes after
    it wait for that part of the budget like for any other decode); a reservation it had not been
    granted yet when the caller gave up is never granted (``MemoryBudget.reserve`` sees the
    deadline), so an abandoned decode that was still waiting never starts. The clock starts when the
    thread is started: waiting for the budget counts.

    ``account``: wraps the call in the thread, e.g. ``MemoryBudget.account(stage)`` so the decode's
    CPU time is counted as its stage's (the caller's own ``cpu_timed`` sees only its thread).
    """
    if timeout_s is None:
        return account(fn, *args) if account is not None else fn(*args)
    deadline = time.monotonic() + timeout_s
    fut: Future = Future()

    def body() -> None:
        _decode.deadline = deadline
        try:
            fut.set_result(account(fn, *args) if account is not None else fn(*args))
        except BaseException as exc:  # noqa: BLE001  (handed to the caller, if it still waits)
            fut.set_exception(exc)

    threading.Thread(target=body, name="lensflow-decode", daemon=True).start()
    try:
        return fut.result(timeout_s)
    except TimeoutError:
        log.warning("decode_timeout", what=what, timeout_s=timeout_s)
        raise StageFailure(ErrorCode.DECODE_TIMEOUT,
                           f"{what} was not decoded within {timeout_s:g} s (LENSFLOW_DECODE_TIMEOUT_S); the decode "
                           f"was abandoned and finishes in the background") from None


def decode_budget(ctx, malloc_mmap_threshold: int | None = None) -> MemoryBudget:
    """The decode budget of the worker process of ``ctx`` (one per context, created on first use):
    ``decode_memory_mb``, shared by preprocess and every model stage, its decode threads counting
    their CPU with the worker's metrics. ``malloc_mmap_threshold``: pin malloc's mmap threshold
    too (see ``pin_malloc_mmap_threshold``), for the stage whose large blocks need it.

    Creating it also sets Pillow's own pixel guard (``Image.MAX_IMAGE_PIXELS``, which refuses over
    twice as many pixels in every ``Image.open`` of the process, whoever calls it) to ``max_pixels``:
    lensflow's own checks refuse more than ``max_pixels`` before decoding, Pillow's stays on behind
    them for any decode that has none."""
    budget = getattr(ctx, "decode_budget", None)
    if budget is None:
        s = ctx.settings
        Image.MAX_IMAGE_PIXELS = s.max_pixels
        budget = ctx.decode_budget = MemoryBudget(s.decode_memory_mb * _MIB, malloc_mmap_threshold=None,
                                                  cpu_timed=ctx.metrics.cpu_timed)
    if malloc_mmap_threshold is not None:
        pin_malloc_mmap_threshold(malloc_mmap_threshold)
    return budget
