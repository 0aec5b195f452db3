"""Small helpers shared by every stage for building records (dicts shaped like their Avro schemas)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, TypedDict


class Status(StrEnum):
    """Status of one stage's result (Avro ``StageStatus``)."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


class ImageStatus(StrEnum):
    """Overall status of an analysed image (Avro ``AnalysisStatus``)."""

    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"

from .errors import ErrorCode, StageFailure

#: Namespace of lensflow's derived UUIDs (image ids from content, Qdrant point ids).
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
LENSFLOW_NS = uuid.UUID("6f1b7a52-93a4-4c1c-9a43-6c1f0c6f3e11")


# --- the records lensflow's code builds and reads, typed (their wire form is the .avsc of the same name) ---

class ModelRef(TypedDict):
    name: str
    version: str
    sha256: str | None


class StageError(TypedDict):
    code: str  # an ErrorCode (streams/errors.py)
    message: str
    retryable: bool
    attempts: int


class ImageUploaded(TypedDict):
    image_id: str
    user_id: str
    run_id: str
    uri: str
    content_type: str | None
    size_bytes: int | None
    uploaded_at: datetime
    stages: list[str] | None
    source: str | None
    attributes: dict[str, str]


class StageResult(TypedDict, total=False):
    """The envelope of every stage result (ImagePrepared, ObjectsResult, … ImageDescribed)."""

    image_id: str
    user_id: str
    run_id: str
    stage: str
    model: ModelRef | None
    status: Status
    error: StageError | None
    duration_ms: float
    produced_at: datetime


class ImagePrepared(StageResult, total=False):
    source_uri: str
    uri: str | None
    format: str | None
    mime_type: str | None
    size_bytes: int
    sha256: str | None
    original_width: int
    original_height: int
    width: int
    height: int
    orientation: int
    derivative_sha256: str | None
    derivative_size_bytes: int
    expected_stages: list[str]
    derived_stages: list[str]
    uploaded_at: datetime
    mode: str  # "full" | "merge"


class DeadLetterInput(TypedDict):
    topic: str
    key: bytes | None
    value: bytes


class DeadLetter(TypedDict):
    stage: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    image_id: str | None
    user_id: str | None
    run_id: str | None
    record: str | None
    error: StageError
    failed_at: datetime
    first_failed_at: datetime | None
    inputs: list[DeadLetterInput]


def now() -> datetime:
    return datetime.now(timezone.utc)


def ms(dt: datetime | int | None) -> int | None:
    """Milliseconds since the epoch; a naive datetime (Cassandra's driver returns them) is UTC."""
    if dt is None or isinstance(dt, int):
        return dt
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def result(stage: str, image_id: str, user_id: str, run_id: str, *, model: ModelRef | None, status: Status = Status.OK,
           error: StageError | None = None, duration_ms: float = 0.0, **fields: Any) -> StageResult:
    """The envelope every stage result carries, plus the stage's own fields."""
    return {"image_id": image_id, "user_id": user_id, "run_id": run_id, "stage": stage, "model": model,
            "status": status, "error": error, "duration_ms": float(duration_ms), "produced_at": now(), **fields}


def image_id_for(user_id: str, sha256_hex: str) -> str:
    """Deterministic image id for content submitted by the CLI: the same bytes by the same user are one image."""
    return str(uuid.uuid5(LENSFLOW_NS, f"{user_id}/{sha256_hex}"))


def point_id(image_id: str) -> str:
    """Qdrant point id (UUID) of an image: stable, so upserts are idempotent."""
    return str(uuid.uuid5(LENSFLOW_NS, f"image/{image_id}"))


#: A user id: letters, digits and ``._@-``, 1 to 64 characters, starting with a letter or digit (and no
#: ``..``, checked apart). It names a storage folder (``uploads/<user_id>/``), so nothing else is allowed.
USER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def check_user_id(user_id: str) -> str:
    """``user_id`` when it is a safe user id; StageFailure('bad_user') otherwise."""
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id) or ".." in user_id:
        shown = repr(user_id) if len(str(user_id)) <= 80 else repr(str(user_id)[:80]) + "…"
        raise StageFailure(ErrorCode.BAD_USER, f"user id {shown} is not allowed: use 1-64 letters, digits and "
                                               "'._@-', starting with a letter or digit, without '..'")
    return user_id
