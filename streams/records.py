"""Small helpers shared by every stage for building records. The records themselves are the generated
types of ``avro_types.py`` (one per Avro schema, ``lensflow schemas --generate``); ``result`` builds a
stage result's envelope in any of them."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from .avro_types import AnalysisStatus, AvroRecord, ModelRef, StageError, StageStatus
from .errors import ErrorCode, StageFailure

#: Status of one stage's result (Avro ``StageStatus``).
Status = StageStatus
#: Overall status of an analysed image (Avro ``AnalysisStatus``).
ImageStatus = AnalysisStatus

#: Namespace of lensflow's derived UUIDs (image ids from content, Qdrant point ids).
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
LENSFLOW_NS = uuid.UUID("6f1b7a52-93a4-4c1c-9a43-6c1f0c6f3e11")

R = TypeVar("R", bound=AvroRecord)


def now() -> datetime:
    return datetime.now(timezone.utc)


def ms(dt: datetime | int | None) -> int | None:
    """Milliseconds since the epoch; a naive datetime (Cassandra's driver returns them) is UTC."""
    if dt is None or isinstance(dt, int):
        return dt
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def result(record_type: type[R], stage: str, image_id: str, user_id: str, run_id: str, *, model: ModelRef | None,
           status: Status = Status.OK, error: StageError | None = None, duration_ms: float = 0.0, **fields: Any) -> R:
    """A stage result of ``record_type`` (``ObjectsResult``, ``ImagePrepared``…): the envelope every stage
    result carries, plus the stage's own ``fields`` (a field the record does not have is a TypeError here)."""
    return record_type(image_id=image_id, user_id=user_id, run_id=run_id, stage=stage, model=model, status=status,
                       error=error, duration_ms=float(duration_ms), produced_at=now(), **fields)


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
