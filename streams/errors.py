"""The error policy, in one place. Every agent asks these functions what to do; none decides alone.

* **Bad input** (not an image, too big, outside the storage roots, garbage bytes): not retried. The
  stage publishes its result with ``status=failed`` and a machine-readable ``code`` so the join
  completes the image (failed or partial) instead of waiting.
* **Transient faults** (storage I/O, timeouts, connection resets): retried with exponential
  backoff (``retrying``); when the attempts run out they are handled like bad input *and* the
  record goes to ``images.deadletter`` with everything needed to replay it.
* **Bugs** (any other exception inside a stage): the image's stage result is ``failed`` with code
  ``internal``, the record is dead-lettered, the worker goes on.
* **Store outages** in the join (Cassandra, Qdrant): retried for ``sink_retry_deadline_s``; then the
  worker exits without acknowledging the batch (see ``fatal``), so nothing is lost: Faust acks a
  batch in a ``finally:`` even when its body raises, so raising would lose it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from dataclasses import dataclass

import structlog
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

log = structlog.get_logger("lensflow.errors")


class StageFailure(Exception):
    """A known, explained failure of one image in one stage."""

    def __init__(self, code: str, message: str, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


@dataclass
class Verdict:
    code: str
    message: str
    retryable: bool
    dead_letter: bool

    def as_error(self, attempts: int = 1) -> dict:
        return {"code": self.code, "message": self.message[:500], "retryable": self.retryable, "attempts": attempts}


_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.EHOSTUNREACH,
                     errno.ENETUNREACH, errno.EPIPE, errno.EIO}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, StageFailure):
        return exc.retryable
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return False


def classify(exc: BaseException) -> Verdict:
    """What an exception raised while processing one record means."""
    if isinstance(exc, StageFailure):
        return Verdict(exc.code, exc.message, exc.retryable, dead_letter=exc.retryable)
    if is_transient(exc):
        return Verdict("transient", f"{type(exc).__name__}: {exc}", True, dead_letter=True)
    return Verdict("internal", f"{type(exc).__name__}: {exc}", False, dead_letter=True)


def retrying(attempts: int, max_wait_s: float = 5.0) -> Retrying:
    """Backoff for transient faults of one record (e.g. fetching an original), in the worker thread
    that does the record's I/O."""
    return Retrying(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.2, max=max_wait_s),
                    retry=retry_if_exception(is_transient), reraise=True)


def sink_retrying(deadline_s: float) -> AsyncRetrying:
    """Backoff for store writes: any exception is retried until the deadline, logging each attempt."""

    def before_sleep(state) -> None:
        log.warning("sink_write_retry", attempt=state.attempt_number, error=repr(state.outcome.exception()))

    return AsyncRetrying(stop=stop_after_delay(deadline_s), wait=wait_exponential(multiplier=0.5, max=30.0),
                         before_sleep=before_sleep, reraise=True)


def fatal(message: str, exc: BaseException | None = None, code: int = 70) -> None:
    """Exit the process at once, without acknowledging the batch in hand (no offset is committed past it)."""
    log.critical("worker_exit", reason=message, error=repr(exc) if exc else None)
    sys.stderr.flush()
    os._exit(code)
