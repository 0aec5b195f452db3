"""The error policy, in one place: every error code lensflow can report, what kind of fault it is,
and what the stage runner does about it. No stage decides alone.

Kinds of fault (``Kind``) and what happens:

* ``bad_input`` — the image itself is the problem (not an image, too big, outside the storage roots,
  wrong owner …). Not retried. The stage publishes its result with ``status=failed`` and the code, so
  the join completes the image as failed or partial instead of waiting. No dead letter: replaying
  the same input would fail the same way.
* ``transient`` — a fault of something the image needs (a store, the broker, the schema registry,
  storage I/O) that may pass, *or a store that refuses everyone* (a rotated key or password, a
  dropped keyspace, table or collection): an outage, never a bad image. Reading one record's bytes
  is first retried ``fetch_retries`` times in place; what still fails, and any store or broker
  fault, makes the runner retry the *whole batch* with capped exponential backoff and full jitter
  under ``retry_deadline_s``. Nothing is acked meanwhile, and past the deadline the runner keeps
  waiting (``on_outage=wait``, the worker reports not ready), exits with ``EXIT_OUTAGE`` (75), or
  (``on_outage=deadletter``) fails the images whose own bytes cannot be read with ``fetch_failed``
  and dead-letters them for replay, while a store or broker fault still waits.
* ``permanent`` — a record that can never be processed: undecodable Avro (a poison record), a record
  a store rejects (a vector of the wrong dimension), an id owned by another user. That image fails
  alone, fast, with the code, and the whole original record goes to ``images.deadletter``.
* ``bug`` — any other exception inside a stage: like ``permanent`` (the image fails with
  ``internal``, dead-lettered), so one bad record never stops a partition.

Faust acks a ``take()`` batch in a ``finally:`` even when its body raises, so raising would lose the
batch: the runner (``streams/runner.py``) never lets a batch body raise; where it must stop, it exits
the process before the batch is acked.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass
from enum import StrEnum

import structlog

from .avro_types import StageError

log = structlog.get_logger("lensflow.errors")

#: Exit codes of a worker (documented in the README).
EXIT_STORES = 3  # the stores could not be opened at start-up
EXIT_BUG = 70  # EX_SOFTWARE: an invariant broke; nothing of the batch in hand was acked
EXIT_OUTAGE = 75  # EX_TEMPFAIL: a transient fault outlasted retry_deadline_s with on_outage=exit


class Kind(StrEnum):
    BAD_INPUT = "bad_input"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    BUG = "bug"


class ErrorCode(StrEnum):
    # bad input: the image fails, nothing to replay
    BAD_REQUEST = "bad_request"
    BAD_USER = "bad_user"
    BAD_URI = "bad_uri"
    OUTSIDE_ROOTS = "outside_roots"
    WRONG_OWNER = "wrong_owner"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_AN_IMAGE = "not_an_image"
    FORMAT_NOT_ALLOWED = "format_not_allowed"
    FORMAT_UNSUPPORTED = "format_unsupported"
    FORMAT_MISMATCH = "format_mismatch"
    UNDECODABLE = "undecodable"
    TOO_MANY_PIXELS = "too_many_pixels"
    OVER_MEMORY_BUDGET = "over_memory_budget"
    TOO_MANY_FRAMES = "too_many_frames"
    DECODE_TIMEOUT = "decode_timeout"
    DERIVATIVE_CHANGED = "derivative_changed"
    UNREADABLE = "unreadable"
    MODEL_UNAVAILABLE = "model_unavailable"
    TIMEOUT = "timeout"
    # transient faults that outlasted their retries: dead-lettered, replayable
    FETCH_FAILED = "fetch_failed"
    TRANSIENT = "transient"
    # permanent: dead-lettered with the whole record
    POISON = "poison"
    ID_CONFLICT = "id_conflict"
    STORE_REJECTED = "store_rejected"
    INTERNAL = "internal"


@dataclass(frozen=True)
class CodeSpec:
    kind: Kind
    dead_letter: bool
    doc: str


#: Every error code, its kind, whether the record is dead-lettered, and what it means (the README's
#: table of error codes is generated from this).
CODES: dict[ErrorCode, CodeSpec] = {
    ErrorCode.BAD_REQUEST: CodeSpec(Kind.BAD_INPUT, False, "The upload asked for unknown or unavailable stages."),
    ErrorCode.BAD_USER: CodeSpec(Kind.BAD_INPUT, False, "The user id is not in the safe alphabet (letters, digits, `._@-`, 1-64 characters, no `..`)."),
    ErrorCode.BAD_URI: CodeSpec(Kind.BAD_INPUT, False, "The original's URI cannot be used (e.g. a file URL with a host)."),
    ErrorCode.OUTSIDE_ROOTS: CodeSpec(Kind.BAD_INPUT, False, "The original's URI is outside the configured storage roots."),
    ErrorCode.WRONG_OWNER: CodeSpec(Kind.BAD_INPUT, False, "The original lies in another user's storage area (`uploads/<user>/`)."),
    ErrorCode.NOT_FOUND: CodeSpec(Kind.BAD_INPUT, False, "The original does not exist."),
    ErrorCode.FORBIDDEN: CodeSpec(Kind.BAD_INPUT, False, "No permission to read the original."),
    ErrorCode.EMPTY: CodeSpec(Kind.BAD_INPUT, False, "The original is empty."),
    ErrorCode.TOO_LARGE: CodeSpec(Kind.BAD_INPUT, False, "The original is over `max_bytes`."),
    ErrorCode.NOT_AN_IMAGE: CodeSpec(Kind.BAD_INPUT, False, "No known image magic bytes."),
    ErrorCode.FORMAT_NOT_ALLOWED: CodeSpec(Kind.BAD_INPUT, False, "The format is not in `formats`."),
    ErrorCode.FORMAT_UNSUPPORTED: CodeSpec(Kind.BAD_INPUT, False, "The format needs a Pillow plugin that is not installed."),
    ErrorCode.FORMAT_MISMATCH: CodeSpec(Kind.BAD_INPUT, False, "Magic bytes and decoder disagree about the format."),
    ErrorCode.UNDECODABLE: CodeSpec(Kind.BAD_INPUT, False, "Truncated or corrupt image data."),
    ErrorCode.TOO_MANY_PIXELS: CodeSpec(Kind.BAD_INPUT, False, "Over `max_pixels` (decompression-bomb guard, from the header)."),
    ErrorCode.OVER_MEMORY_BUDGET: CodeSpec(Kind.BAD_INPUT, False, "Decoding would need more memory than `decode_memory_mb` (estimated from the header)."),
    ErrorCode.TOO_MANY_FRAMES: CodeSpec(Kind.BAD_INPUT, False, "A multi-page or animated image with over `max_frames` pages or frames (counted from the file's structure, at most `max_frames` + 1 of them, before any decode)."),
    ErrorCode.DECODE_TIMEOUT: CodeSpec(Kind.BAD_INPUT, False, "Decoding took over `decode_timeout_s` of wall-clock time (waiting for the decode budget included); the image fails and the stream goes on while the decode finishes in the background."),
    ErrorCode.DERIVATIVE_CHANGED: CodeSpec(Kind.BAD_INPUT, False, "The derivative a model stage read is not the one preprocess recorded (another SHA-256, no recorded hash, not a JPEG, or another size): the file was replaced after preprocess. Nothing of it is decoded; submit the image again."),
    ErrorCode.UNREADABLE: CodeSpec(Kind.BAD_INPUT, False, "No metadata: the original could not be read."),
    ErrorCode.MODEL_UNAVAILABLE: CodeSpec(Kind.BAD_INPUT, False, "The stage's model files are missing or fail their checksum (`lensflow models prepare`)."),
    ErrorCode.TIMEOUT: CodeSpec(Kind.BAD_INPUT, False, "The join completed the image without this stage's result (the stage stalled or is not deployed)."),
    ErrorCode.FETCH_FAILED: CodeSpec(Kind.TRANSIENT, True, "Reading the original or derivative kept failing past `retry_deadline_s` with `on_outage=deadletter`; dead-lettered for replay (otherwise a storage fault holds the batch as an outage)."),
    ErrorCode.TRANSIENT: CodeSpec(Kind.TRANSIENT, True, "Another transient fault outlasted its retries; dead-lettered for replay."),
    ErrorCode.POISON: CodeSpec(Kind.PERMANENT, True, "An input record that cannot be decoded (garbage bytes, an unknown schema fingerprint, a key that does not match its image id)."),
    ErrorCode.ID_CONFLICT: CodeSpec(Kind.PERMANENT, True, "The image id already belongs to another user."),
    ErrorCode.STORE_REJECTED: CodeSpec(Kind.PERMANENT, True, "A store refused the image's write for good (e.g. a vector of the wrong dimension)."),
    ErrorCode.INTERNAL: CodeSpec(Kind.BUG, True, "A bug in a stage; the record is dead-lettered and the worker goes on."),
}


class StageFailure(Exception):
    """A known, explained failure of one image in one stage."""

    def __init__(self, code: ErrorCode | str, message: str, retryable: bool = False):
        super().__init__(message)
        self.code = ErrorCode(code)  # an unknown code is a bug here, not at a consumer
        self.message = message
        self.retryable = retryable


@dataclass
class Verdict:
    code: ErrorCode
    message: str
    retryable: bool
    dead_letter: bool

    @property
    def kind(self) -> Kind:
        return CODES[self.code].kind

    def as_error(self, attempts: int = 1) -> StageError:
        """The ``StageError`` a failed result or a dead letter carries."""
        return StageError(code=str(self.code), message=self.message[:500], retryable=self.retryable, attempts=attempts)


_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.EHOSTUNREACH,
                     errno.ENETUNREACH, errno.EPIPE, errno.EIO, errno.ECONNABORTED}


#: Cassandra errors that say the keyspace or a table is missing: the schema of the whole store is gone
#: (a dropped keyspace, a table not yet created), not something wrong with one image's row.
_CQL_SCHEMA_MISSING = ("keyspace", "unconfigured table", "does not exist", "doesn't exist", "undefined column")


def _store_transient(exc: BaseException) -> bool | None:
    """True when a store, broker or registry client exception means *the service* is down or refuses
    everyone (retry the batch, un-acked: an outage), False when it refuses this one request for good,
    None when its meaning is unknown here.

    A refusal of everyone is an outage, not a bad image: a rotated API key or password (401/403,
    ``Unauthorized``, ``AuthenticationFailed``), a dropped keyspace, table or collection (Cassandra
    ``InvalidRequest: unconfigured table …``/``Keyspace … does not exist``, Qdrant 404). Treating them
    as one image's ``store_rejected`` rewrote every image's good row as failed during a key rotation."""
    module = type(exc).__module__ or ""
    name = type(exc).__name__
    if module.startswith("cassandra"):
        # NoHostAvailable, OperationTimedOut, Unavailable, ReadTimeout, WriteTimeout, Overloaded, ConnectionException…
        # are transient; so are Unauthorized/AuthenticationFailed (credentials or grants of the whole store) and an
        # InvalidRequest about a missing keyspace or table; SyntaxException, a type error in a value… are not
        if name in {"Unauthorized", "AuthenticationFailed"}:
            return True
        if name in {"InvalidRequest", "ConfigurationException"}:
            text = str(exc).lower()
            return any(marker in text for marker in _CQL_SCHEMA_MISSING)
        return name not in {"SyntaxException", "AlreadyExists", "ProtocolException", "UnsupportedOperation"}
    if module.startswith("qdrant_client"):
        status = getattr(exc, "status_code", None)
        if status is not None:
            return status >= 500 or status in (401, 403, 404, 408, 429)
        if name in {"ResponseHandlingException"}:
            return True
        # local mode: a dropped collection is a ValueError "Collection … not found"
        return True if "not found" in str(exc).lower() else None
    if name == "SchemaRegistryError":  # confluent-kafka's registry client: an HTTP answer of the registry
        status = getattr(exc, "http_status_code", None) or 0
        return status >= 500 or status in (401, 403, 408, 429) or status <= 0
    if module.startswith(("aiokafka", "kafka")):
        # KafkaTimeoutError (a produce batch expired: the broker unreachable past request_timeout) is not
        # marked retriable by aiokafka, but it is the broker's outage, not the record's
        return name == "KafkaTimeoutError" or bool(getattr(exc, "retriable", True))
    if module.startswith(("httpx", "httpcore")):
        return name.endswith(("TimeoutException", "ConnectError", "ReadError", "WriteError", "RemoteProtocolError",
                              "PoolTimeout", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "NetworkError"))
    if module.startswith("grpc"):
        return True
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a fault of something the work needs (a store, the broker, the schema
    registry, storage I/O) rather than of the record: the batch is retried un-acked under
    ``retry_deadline_s``, then the worker waits (not ready) or exits 75."""
    if isinstance(exc, StageFailure):
        return exc.retryable
    known = _store_transient(exc)
    if known is not None:
        return known
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return False


class StoreRejected(Exception):
    """A write a store can never accept (the store layer's own checks, e.g. a vector of the wrong size)."""


def is_store_rejection(exc: BaseException) -> bool:
    """A store said no for good (as opposed to a bug of ours or a transient fault)."""
    if isinstance(exc, StoreRejected) or _store_transient(exc) is False:
        return True
    if is_transient(exc):
        return False  # the store refuses everyone (auth, a dropped keyspace or collection): an outage
    module = type(exc).__module__ or ""
    # qdrant-client's local mode raises ValueError for a vector of the wrong size or an unknown vector name
    return module.startswith("qdrant_client") or (isinstance(exc, ValueError) and "vector" in str(exc).lower())


def classify(exc: BaseException) -> Verdict:
    """What an exception raised while processing one record means."""
    if isinstance(exc, StageFailure):
        return Verdict(exc.code, exc.message, exc.retryable, dead_letter=CODES[exc.code].dead_letter)
    text = f"{type(exc).__name__}: {exc}"
    if is_transient(exc):
        return Verdict(ErrorCode.TRANSIENT, text, True, dead_letter=True)
    if is_store_rejection(exc):
        return Verdict(ErrorCode.STORE_REJECTED, text, False, dead_letter=True)
    return Verdict(ErrorCode.INTERNAL, text, False, dead_letter=True)


#: Set by ``RetryPolicy.call`` for the attempts it makes past ``retry_deadline_s`` under
#: ``on_outage=deadletter``: a transient fault of one record's I/O then fails that image alone.
_FAIL_RECORD_FAULTS: contextvars.ContextVar[bool] = contextvars.ContextVar("lensflow_fail_record_faults", default=False)


def record_fault(exc: BaseException, attempts: int, what: str) -> BaseException:
    """What a fault reading one record's bytes (an original, a derivative) means.

    A transient one (connection refused, a timeout, EIO, HTTP 5xx) says storage is down, not that the
    image is bad: it is *raised*, so the runner retries the whole batch un-acked under
    ``retry_deadline_s`` and then waits or exits 75, like any store outage (a one-minute S3 or NFS
    outage used to fail every upload read in that minute with ``fetch_failed``). Only past the
    deadline with ``on_outage=deadletter`` is it returned as that image's ``fetch_failed`` failure,
    dead-lettered for replay once storage is mended. Any other exception is returned as it is."""
    if not is_transient(exc):
        return exc
    if not _FAIL_RECORD_FAULTS.get():
        raise exc
    return StageFailure(ErrorCode.FETCH_FAILED, f"{what} failed {attempts} times: {type(exc).__name__}: {exc}", True)


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Capped exponential backoff with full jitter (attempt 1 → up to base_s, doubling, capped at max_s)."""
    return random.uniform(0, min(max_s, base_s * (2 ** max(0, attempt - 1))))


def retry_sync(fn, attempts: int, base_s: float = 0.2, max_s: float = 5.0, sleep=None):
    """``fn()`` retried on transient faults up to ``attempts`` times, in the calling (worker) thread.
    Returns (value, attempts made); raises the last exception, with ``attempts`` set on it."""

    sleep = sleep or time.sleep
    for attempt in range(1, attempts + 1):
        try:
            return fn(), attempt
        except Exception as exc:
            if attempt >= attempts or not is_transient(exc):
                exc.attempts = attempt  # type: ignore[attr-defined]
                raise
            sleep(backoff_s(attempt, base_s, max_s))
    raise AssertionError("unreachable")


class Outage(Exception):
    """A transient fault outlasted ``retry_deadline_s`` (raised only where ``on_outage`` allows going on)."""


@dataclass
class RetryPolicy:
    """Retries of a whole batch's transient faults (stores, broker), from settings."""

    base_s: float = 0.2
    max_s: float = 10.0
    deadline_s: float = 300.0
    on_outage: str = "wait"  # "wait" | "exit" | "deadletter"

    @classmethod
    def from_settings(cls, s) -> "RetryPolicy":
        return cls(s.retry_base_s, s.retry_max_s, s.retry_deadline_s, s.on_outage)

    async def call(self, fn, *args, what: str, on_wait=None, sleep=asyncio.sleep):
        """``await fn(*args)``, retrying transient faults. Any other exception propagates at once.
        Past the deadline: ``exit`` ends the process (nothing acked); ``wait`` keeps retrying at
        ``max_s``; ``deadletter`` first tries once more at once with one record's own I/O faults failing
        that image (``record_fault``), then waits like ``wait``; ``on_wait(waiting: bool)`` is told when
        the wait starts and ends (readiness)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempt = 0
        outage = False
        fail_records = None  # the contextvar token while records' own faults fail their images
        try:
            while True:
                attempt += 1
                try:
                    return await fn(*args)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    elapsed = loop.time() - started
                    if elapsed >= self.deadline_s:
                        if self.on_outage == "deadletter" and fail_records is None:
                            # once more at once, with records' own I/O faults failing those images alone;
                            # a store or broker fault still waits
                            fail_records = _FAIL_RECORD_FAULTS.set(True)
                            log.warning("record_faults_fail_now", what=what, elapsed_s=round(elapsed, 1))
                            continue
                        if self.on_outage == "exit":
                            fatal(f"{what}: transient fault outlasted retry_deadline_s={self.deadline_s:.0f}s", exc,
                                  code=EXIT_OUTAGE)
                        if not outage and on_wait is not None:
                            on_wait(True)
                        outage = True
                        delay = self.max_s
                    else:
                        delay = min(backoff_s(attempt, self.base_s, self.max_s), max(0.0, self.deadline_s - elapsed) + 0.01)
                    log.warning("transient_retry", what=what, attempt=attempt, elapsed_s=round(elapsed, 1),
                                next_in_s=round(delay, 2), error=f"{type(exc).__name__}: {exc}"[:300])
                    await sleep(delay)
        finally:
            if fail_records is not None:
                _FAIL_RECORD_FAULTS.reset(fail_records)
            if outage and on_wait is not None:
                on_wait(False)


def fatal(message: str, exc: BaseException | None = None, code: int = EXIT_BUG) -> None:
    """Exit the process at once, without acknowledging the batch in hand (no offset is committed past it)."""

    trace = "".join(traceback.format_exception(exc))[-6000:] if exc is not None and exc.__traceback__ else None
    log.critical("worker_exit", reason=message, error=repr(exc) if exc else None, exit_code=code, traceback=trace)
    sys.stderr.flush()
    os._exit(code)


def codes_markdown() -> str:
    """The README's table of error codes (tests/unit/test_docs.py keeps the two equal)."""
    rows = ["| code | kind | dead-lettered | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{code}` | {spec.kind} | {'yes' if spec.dead_letter else 'no'} | {spec.doc} |" for code, spec in CODES.items()]
    return "\n".join(rows)
