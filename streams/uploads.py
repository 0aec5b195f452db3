"""Uploads, written once for every edge: store an upload's bytes under the user's own folder, produce
its ``ImageUploaded`` (or any keyed record), and wait for ``images.analyzed``.

``lensflow submit``, ``reanalyze``, ``deadletter replay`` and the read service's ``POST /v1/images``
all go through here, so an image uploaded by HTTP is the same event, with the same id, as the same
bytes submitted by the CLI (``records.image_id_for``: one image per user and content).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .avro_types import AvroRecord, ImageUploaded
from .codec import Codec
from .kafka import end_offsets_consumer, producer
from .records import check_user_id, image_id_for, now
from .settings import Settings
from .storage import Storage
from .topology import ANALYZED, AVAILABLE_STAGES, STAGES, UPLOADED, StageKind

#: the extensions a stored original keeps (the worker sniffs the format from the bytes; a file's name is
#: the user's text and never part of the stored name otherwise)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".heic", ".heif", ".avif"})
#: the extension of a sniffed Pillow format
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "TIFF": ".tif", "BMP": ".bmp",
                     "HEIF": ".heic", "AVIF": ".avif", "MPO": ".jpg"}
#: seconds a producer flush waits for the broker before the delivery is reported failed
FLUSH_TIMEOUT_S = 30.0


class NotDelivered(Exception):
    """Events the broker did not acknowledge (Kafka down or refusing): nothing was lost, send again."""


def storage_for(s: Settings) -> Storage:
    return Storage(s.roots, allow_private_redirects=s.storage_allow_private_redirects, per_user=s.per_user_storage)


def store_upload(s: Settings, storage: Storage, user: str, data: bytes, suffix: str = "") -> tuple[str, str]:
    """Write an upload's bytes under ``<storage>/uploads/<user>/<image id><suffix>``; (image id, URI).
    The image id is ``image_id_for(user, sha256)``: the same bytes twice are one image. Raises
    StageFailure for a bad user id or a path outside the user's own area."""
    check_user_id(user)  # it names the user's storage folder: checked before anything is written
    image_id = image_id_for(user, hashlib.sha256(data).hexdigest())
    suffix = suffix.lower() if suffix.lower() in IMAGE_EXTENSIONS else ""
    # the same ownership check the worker makes: the stored copy lies in the user's own area
    uri = storage.write(storage.check_owned(f"{s.storage}/uploads/{user}/{image_id}{suffix}", user, per_user=True), data)
    return image_id, uri


def upload_record(user: str, image_id: str, uri: str, size: int | None, run_id: str, stages: list[str] | None,
                  source: str, attributes: dict[str, str] | None = None) -> ImageUploaded:
    """The ``ImageUploaded`` of one image."""
    return ImageUploaded(image_id=image_id, user_id=user, run_id=run_id, uri=uri, content_type=None, size_bytes=size,
                         uploaded_at=now(), stages=stages, source=source, attributes=dict(attributes or {}))


def new_run_id(image_id: str, batch: str | None = None) -> str:
    """A run id: one batch id shared by a submission, then the image's first 8 characters."""
    return f"{batch or uuid.uuid4()}:{image_id[:8]}"


def reanalysable_stages() -> list[str]:
    """The stages a re-analysis may run again: the pixel stages (metadata and describe follow a
    re-submission)."""
    return [x for x in AVAILABLE_STAGES if STAGES[x].kind == StageKind.PIXEL]


def reanalysis(codec: Codec, store, image_id: str, run_id: str, stage: str, batch: str) -> tuple[dict | None, str]:
    """The ``ImagePrepared`` that runs ``stage`` again on a stored run of an image (``lensflow reanalyze``
    and the read service's admin route): its stored preprocess result, sent again in merge mode under
    run ``<batch>:<image id's first 8>``; or (None, why not)."""
    raw = store.stored_records(image_id, run_id).get("preprocess")
    if raw is None:
        return None, "no stored preprocess result"
    _, prepared = codec.decode(raw, expect="ImagePrepared")
    if prepared["status"] != "ok":
        return None, "the image failed preprocess"
    prepared.update(run_id=new_run_id(image_id, batch), expected_stages=[stage], derived_stages=[], mode="merge",
                    produced_at=now())
    return prepared, ""


@dataclass
class Publisher:
    """An idempotent producer of keyed, Avro-encoded records (confluent-kafka, ``kafka.producer``).
    ``send`` blocks until every record is acknowledged, else raises NotDelivered naming the first
    failures; call it off any event loop."""

    settings: Settings
    codec: Codec
    _producer: object = field(default=None, init=False, repr=False)

    @classmethod
    def for_settings(cls, s: Settings) -> "Publisher":
        return cls(s, Codec.for_settings(s))

    def send(self, topic: str, record_name: str, records: Iterable[tuple[str, AvroRecord | dict]],
             advance: Callable[[], None] | None = None, timeout_s: float = FLUSH_TIMEOUT_S) -> int:
        """Produce ``(key, record)`` pairs to ``topic`` (a topology name); the number sent."""
        if self._producer is None:
            self._producer = producer(self.settings)
        prod = self._producer
        name = self.settings.topic(topic)
        failures: list[str] = []

        def delivered(error, msg):
            if error is not None:
                failures.append(f"{msg.key().decode()}: {error}")

        sent = 0
        for key, record in records:
            prod.produce(name, key=key.encode(), on_delivery=delivered, value=self.codec.encode(record_name, record, topic=name))
            prod.poll(0)
            sent += 1
            if advance is not None:
                advance()
        remaining = prod.flush(timeout_s)
        if remaining or failures:
            raise NotDelivered(f"{remaining + len(failures)} event(s) not delivered to {name}: "
                               f"{'; '.join(failures[:3]) or 'Kafka unreachable'}")
        return sent

    def upload(self, records: list[ImageUploaded | dict], advance: Callable[[], None] | None = None) -> int:
        """Produce ``ImageUploaded`` records (``upload_record``), keyed by image id."""
        return self.send(UPLOADED, "ImageUploaded", ((r["image_id"], r) for r in records), advance)


class AnalyzedWatch:
    """Waits for the ``images.analyzed`` of given runs. Open it *before* producing (it starts at the
    topic's current end, so it sees only what comes next), then ``wait``."""

    def __init__(self, s: Settings, codec: Codec):
        self.codec = codec
        self.consumer = end_offsets_consumer(s, [ANALYZED])

    def wait(self, runs: dict[str, str], timeout_s: float, advance: Callable[[], None] | None = None,
             started: float | None = None) -> dict[str, dict]:
        """image id -> its ``ImageAnalyzed`` for each ``runs`` entry (image id -> run id) analysed within
        ``timeout_s``, with ``seconds`` since ``started`` (a ``time.monotonic()``; default: the call)."""
        results: dict[str, dict] = {}
        started = time.monotonic() if started is None else started
        deadline = time.monotonic() + timeout_s
        while len(results) < len(runs) and time.monotonic() < deadline:
            msg = self.consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            try:
                _, rec = self.codec.decode(msg.value(), expect="ImageAnalyzed")
            except Exception:  # noqa: BLE001  (another producer's record: not ours to judge here)
                continue
            if runs.get(rec["image_id"]) == rec["run_id"] and rec["image_id"] not in results:
                rec["seconds"] = time.monotonic() - started
                results[rec["image_id"]] = rec
                if advance is not None:
                    advance()
        return results

    def close(self) -> None:
        self.consumer.close()
