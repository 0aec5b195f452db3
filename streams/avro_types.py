# GENERATED FILE: do not edit. Made from schemas/lensflow.v1.*.avsc by streams/recordgen.py;
# regenerate with `lensflow schemas --generate` (or `python -m lensflow.streams.recordgen`) after a schema
# changes. tests/unit/test_records_types.py fails while this file and the schemas disagree.
"""One Python type per Avro record and enum of lensflow (``schemas/``), for the code that builds records.

Records are ``dataclass``-es (``slots``, keyword-only), not ``TypedDict``-s: a TypedDict is a plain dict
at run time, so a misspelt or missing field went unnoticed until fastavro refused the record at encode
time, on another line, in another task. A dataclass refuses it where the record is built. Stages build
these types and hand them to the codec, which writes ``to_avro()`` (the dict fastavro takes: one
read per field, lists of primitives such as vectors passed as they are, not copied; nested records
converted by their own ``to_avro``). A nested record may also be a dict shaped like the schema (the
join embeds the records it decoded as they are): it is passed to fastavro unchanged. ``from_avro()``
builds a type from what fastavro decodes.

Decoding stays dict-based: ``Codec.decode`` returns fastavro's dicts, which the join, the read side and
the CLI read as they always did. So that code reading a record reads a decoded one and a built one
alike, a record also answers ``rec["field"]``, ``rec.get("field")`` and ``"field" in rec``
(read-only: set attributes).

Enums are ``StrEnum``-s: members equal their symbols (``StageStatus.OK == "ok"``), which is what
fastavro writes and what decoded records hold.
"""

from __future__ import annotations

import dataclasses as _dc
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Mapping


class AvroRecord:
    """Base of every generated record type."""

    __slots__ = ()
    AVRO_NAME: ClassVar[str] = ""  # the Avro full name, e.g. "lensflow.v1.ObjectsResult"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ()  # field names, in schema order

    def to_avro(self) -> dict[str, Any]:
        """The dict fastavro writes."""
        raise NotImplementedError

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> AvroRecord:
        """The record from the dict fastavro reads (or one shaped like it)."""
        raise NotImplementedError

    # read like a decoded record (a dict) --------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key in self.AVRO_FIELDS:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.AVRO_FIELDS else default

    def __contains__(self, key: object) -> bool:
        return key in self.AVRO_FIELDS


def _rec(v: Any) -> Any:
    """A nested record as fastavro writes it: a generated type converted, a dict (or None) as it is."""
    return v.to_avro() if isinstance(v, AvroRecord) else v


def _opt(f: Any, v: Any) -> Any:
    """``f(v)``, or None for None."""
    return None if v is None else f(v)


def _any(v: Any) -> Any:
    """A value of a union of several types as fastavro writes it."""
    if isinstance(v, AvroRecord):
        return v.to_avro()
    if isinstance(v, list):
        return [_any(x) for x in v]
    if isinstance(v, dict):
        return {k: _any(x) for k, x in v.items()}
    return v


class AnalysisStatus(StrEnum):
    """Outcome of a whole image: complete (every expected stage ok), partial (some failed or timed out), failed
    (the image itself could not be read).
    """

    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"


class StageStatus(StrEnum):
    """Outcome of one stage for one image. Readers that meet an unknown symbol read 'skipped'."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@_dc.dataclass(slots=True, kw_only=True)
class AnalysisSummary(AvroRecord):
    """What an ImageAnalyzed consumer needs without reading the stores: counts, a text excerpt, place and
    safety.
    """

    AVRO_NAME: ClassVar[str] = "lensflow.v1.AnalysisSummary"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("text_excerpt", "language", "objects", "faces", "people",
                                              "text_lines", "place", "nsfw_score")

    #: The OCR text, cut to 280 characters (an ellipsis marks a cut).
    text_excerpt: str | None = None
    #: Language of the OCR text (ISO 639-1), when read.
    language: str | None = None
    #: Objects detected.
    objects: int = 0
    #: Faces detected.
    faces: int = 0
    #: Names of the recognised people (named by the user).
    people: list[str] = _dc.field(default_factory=list)
    #: Lines of text read.
    text_lines: int = 0
    #: Where it was taken (city, region, country) from its GPS position.
    place: str | None = None
    #: The safety stage's NSFW probability, 0–1, when it ran.
    nsfw_score: float | None = None

    def to_avro(self) -> dict[str, Any]:
        return {"text_excerpt": self.text_excerpt, "language": self.language, "objects": self.objects,
                "faces": self.faces, "people": self.people, "text_lines": self.text_lines, "place": self.place,
                "nsfw_score": self.nsfw_score}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> AnalysisSummary:
        return cls(text_excerpt=d.get("text_excerpt", None), language=d.get("language", None),
                   objects=d.get("objects", 0), faces=d.get("faces", 0), people=d.get("people", []),
                   text_lines=d.get("text_lines", 0), place=d.get("place", None),
                   nsfw_score=d.get("nsfw_score", None))


@_dc.dataclass(slots=True, kw_only=True)
class Box(AvroRecord):
    """Axis-aligned box in pixel coordinates of the original image after EXIF orientation (x right, y down).
    """

    AVRO_NAME: ClassVar[str] = "lensflow.v1.Box"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("x1", "y1", "x2", "y2")

    #: left
    x1: float
    #: top
    y1: float
    #: right
    x2: float
    #: bottom
    y2: float

    def to_avro(self) -> dict[str, Any]:
        return {"x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Box:
        return cls(x1=d["x1"], y1=d["y1"], x2=d["x2"], y2=d["y2"])


@_dc.dataclass(slots=True, kw_only=True)
class CacheInvalidation(AvroRecord):
    """Keys whose cached views are stale, on cache.invalidations."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.CacheInvalidation"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "keys", "reason", "analysis_version",
                                              "produced_at")

    #: Image identity.
    image_id: str
    #: Owner.
    user_id: str
    #: Cache keys to drop, e.g. 'image:ID', 'user:U:gallery'.
    keys: list[str] = _dc.field(default_factory=list)
    #: analyzed | reanalyzed | deleted.
    reason: str
    #: Version now stored.
    analysis_version: int = 0
    #: When produced.
    produced_at: datetime

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "keys": self.keys, "reason": self.reason,
                "analysis_version": self.analysis_version, "produced_at": self.produced_at}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> CacheInvalidation:
        return cls(image_id=d["image_id"], user_id=d["user_id"], keys=d.get("keys", []), reason=d["reason"],
                   analysis_version=d.get("analysis_version", 0), produced_at=d["produced_at"])


@_dc.dataclass(slots=True, kw_only=True)
class DeadLetter(AvroRecord):
    """A record a stage could not process, on images.deadletter, with everything needed to replay it."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.DeadLetter"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("stage", "topic", "partition", "offset", "key", "value",
                                              "image_id", "user_id", "run_id", "record", "error", "failed_at",
                                              "first_failed_at", "inputs")

    #: Stage that gave up.
    stage: str
    #: Source topic.
    topic: str
    #: Source partition.
    partition: int
    #: Source offset.
    offset: int
    #: Source key bytes.
    key: bytes | None = None
    #: Source value bytes, as received.
    value: bytes
    #: Image, when the record could be decoded.
    image_id: str | None = None
    #: Owner of the image, when the record could be decoded.
    user_id: str | None = None
    #: Analysis run of the image, when the record could be decoded.
    run_id: str | None = None
    #: Avro record name of `value` (e.g. lensflow.v1.ImageUploaded), when it could be decoded.
    record: str | None = None
    #: Why.
    error: StageError
    #: When it was dead-lettered.
    failed_at: datetime
    #: When the first attempt failed (retries ran until failed_at).
    first_failed_at: datetime | None = None
    #: Every other record the stage held for the image (the join: images.prepared and each stage result); empty
    #: for single-record stages.
    inputs: list[DeadLetterInput] = _dc.field(default_factory=list)

    def to_avro(self) -> dict[str, Any]:
        return {"stage": self.stage, "topic": self.topic, "partition": self.partition, "offset": self.offset,
                "key": self.key, "value": self.value, "image_id": self.image_id, "user_id": self.user_id,
                "run_id": self.run_id, "record": self.record, "error": _rec(self.error),
                "failed_at": self.failed_at, "first_failed_at": self.first_failed_at,
                "inputs": [_rec(x) for x in self.inputs]}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> DeadLetter:
        return cls(stage=d["stage"], topic=d["topic"], partition=d["partition"], offset=d["offset"],
                   key=d.get("key", None), value=d["value"], image_id=d.get("image_id", None),
                   user_id=d.get("user_id", None), run_id=d.get("run_id", None), record=d.get("record", None),
                   error=StageError.from_avro(d["error"]), failed_at=d["failed_at"],
                   first_failed_at=d.get("first_failed_at", None),
                   inputs=[DeadLetterInput.from_avro(x) for x in d.get("inputs", [])])


@_dc.dataclass(slots=True, kw_only=True)
class DeadLetterInput(AvroRecord):
    """One more source record the stage held for this image (the join's per-stage results), so a replay can
    rebuild the image.
    """

    AVRO_NAME: ClassVar[str] = "lensflow.v1.DeadLetterInput"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("topic", "key", "value")

    #: Source topic.
    topic: str
    #: Source key bytes.
    key: bytes | None = None
    #: Source value bytes, as received.
    value: bytes

    def to_avro(self) -> dict[str, Any]:
        return {"topic": self.topic, "key": self.key, "value": self.value}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> DeadLetterInput:
        return cls(topic=d["topic"], key=d.get("key", None), value=d["value"])


@_dc.dataclass(slots=True, kw_only=True)
class Detection(AvroRecord):
    """One detected object."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.Detection"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("label", "class_id", "confidence", "box")

    #: Class name (COCO-80 for the default detector).
    label: str
    #: Class index.
    class_id: int
    #: Score in [0, 1].
    confidence: float
    #: Box in original-image pixels.
    box: Box

    def to_avro(self) -> dict[str, Any]:
        return {"label": self.label, "class_id": self.class_id, "confidence": self.confidence,
                "box": _rec(self.box)}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Detection:
        return cls(label=d["label"], class_id=d["class_id"], confidence=d["confidence"],
                   box=Box.from_avro(d["box"]))


@_dc.dataclass(slots=True, kw_only=True)
class EmbeddingResult(AvroRecord):
    """Image vector on analysis.embedding."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.EmbeddingResult"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "stage", "model", "status",
                                              "error", "duration_ms", "produced_at", "vector_name", "dim",
                                              "vector")

    #: Image identity; the Kafka key of every record.
    image_id: str
    #: Owner of the image.
    user_id: str
    #: Identity of the analysis run (one upload request or one re-analysis).
    run_id: str
    #: Always 'embedding'.
    stage: str
    #: Model (or algorithm) name and version.
    model: ModelRef | None = None
    #: Outcome of this stage for this image.
    status: StageStatus
    #: Set when status is 'failed'.
    error: StageError | None = None
    #: Processing time of this stage for this image, milliseconds.
    duration_ms: float = 0.0
    #: When this record was produced (UTC).
    produced_at: datetime
    #: Named vector in Qdrant, e.g. 'visual'.
    vector_name: str = "visual"
    #: Vector dimension.
    dim: int = 0
    #: L2-normalised vector.
    vector: list[float] = _dc.field(default_factory=list)

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id, "stage": self.stage,
                "model": _rec(self.model), "status": self.status, "error": _rec(self.error),
                "duration_ms": self.duration_ms, "produced_at": self.produced_at,
                "vector_name": self.vector_name, "dim": self.dim, "vector": self.vector}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> EmbeddingResult:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"], stage=d["stage"],
                   model=_opt(ModelRef.from_avro, d.get("model", None)), status=StageStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   duration_ms=d.get("duration_ms", 0.0), produced_at=d["produced_at"],
                   vector_name=d.get("vector_name", "visual"), dim=d.get("dim", 0), vector=d.get("vector", []))


@_dc.dataclass(slots=True, kw_only=True)
class Face(AvroRecord):
    """One detected face."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.Face"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("face_id", "box", "confidence", "landmarks", "encoding",
                                              "person_id", "person_name", "match_distance")

    #: Stable id of this face within the image.
    face_id: str
    #: Face box in original-image pixels.
    box: Box
    #: Detector score (1.0 when the detector gives none).
    confidence: float
    #: Facial landmarks.
    landmarks: list[Point] = _dc.field(default_factory=list)
    #: Face descriptor (128-d for dlib).
    encoding: list[float] = _dc.field(default_factory=list)
    #: Matched or newly clustered person of the same user.
    person_id: str | None = None
    #: Name of the matched person when enrolled or named.
    person_name: str | None = None
    #: Descriptor distance to the match.
    match_distance: float | None = None

    def to_avro(self) -> dict[str, Any]:
        return {"face_id": self.face_id, "box": _rec(self.box), "confidence": self.confidence,
                "landmarks": [_rec(x) for x in self.landmarks], "encoding": self.encoding,
                "person_id": self.person_id, "person_name": self.person_name,
                "match_distance": self.match_distance}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Face:
        return cls(face_id=d["face_id"], box=Box.from_avro(d["box"]), confidence=d["confidence"],
                   landmarks=[Point.from_avro(x) for x in d.get("landmarks", [])],
                   encoding=d.get("encoding", []), person_id=d.get("person_id", None),
                   person_name=d.get("person_name", None), match_distance=d.get("match_distance", None))


@_dc.dataclass(slots=True, kw_only=True)
class FacesResult(AvroRecord):
    """Faces on analysis.faces."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.FacesResult"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "stage", "model", "status",
                                              "error", "duration_ms", "produced_at", "faces")

    #: Image identity; the Kafka key of every record.
    image_id: str
    #: Owner of the image.
    user_id: str
    #: Identity of the analysis run (one upload request or one re-analysis).
    run_id: str
    #: Always 'faces'.
    stage: str
    #: Model (or algorithm) name and version.
    model: ModelRef | None = None
    #: Outcome of this stage for this image.
    status: StageStatus
    #: Set when status is 'failed'.
    error: StageError | None = None
    #: Processing time of this stage for this image, milliseconds.
    duration_ms: float = 0.0
    #: When this record was produced (UTC).
    produced_at: datetime
    #: Faces found.
    faces: list[Face] = _dc.field(default_factory=list)

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id, "stage": self.stage,
                "model": _rec(self.model), "status": self.status, "error": _rec(self.error),
                "duration_ms": self.duration_ms, "produced_at": self.produced_at,
                "faces": [_rec(x) for x in self.faces]}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> FacesResult:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"], stage=d["stage"],
                   model=_opt(ModelRef.from_avro, d.get("model", None)), status=StageStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   duration_ms=d.get("duration_ms", 0.0), produced_at=d["produced_at"],
                   faces=[Face.from_avro(x) for x in d.get("faces", [])])


@_dc.dataclass(slots=True, kw_only=True)
class GeoPoint(AvroRecord):
    """WGS84 position, signed decimal degrees; range-checked."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.GeoPoint"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("lat", "lon", "alt_m")

    #: Latitude, -90..90.
    lat: float
    #: Longitude, -180..180.
    lon: float
    #: Altitude in metres above sea level (negative below).
    alt_m: float | None = None

    def to_avro(self) -> dict[str, Any]:
        return {"lat": self.lat, "lon": self.lon, "alt_m": self.alt_m}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> GeoPoint:
        return cls(lat=d["lat"], lon=d["lon"], alt_m=d.get("alt_m", None))


@_dc.dataclass(slots=True, kw_only=True)
class ImageAggregated(AvroRecord):
    """Phase-1 aggregate on images.aggregated, read by derived stages (describe)."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.ImageAggregated"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "status", "prepared",
                                              "metadata", "objects", "scene", "text", "faces", "embedding",
                                              "stages", "aggregated_at")

    #: Image identity.
    image_id: str
    #: Owner.
    user_id: str
    #: Run identity.
    run_id: str
    #: Status so far.
    status: AnalysisStatus
    #: The preprocess result.
    prepared: ImagePrepared | None = None
    #: EXIF.
    metadata: MetadataResult | None = None
    #: Objects.
    objects: ObjectsResult | None = None
    #: Scene.
    scene: SceneResult | None = None
    #: Text.
    text: TextResult | None = None
    #: Faces.
    faces: FacesResult | None = None
    #: Visual vector.
    embedding: EmbeddingResult | None = None
    #: Every stage's outcome.
    stages: list[StageSummary] = _dc.field(default_factory=list)
    #: When phase 1 completed.
    aggregated_at: datetime

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id,
                "status": self.status, "prepared": _rec(self.prepared), "metadata": _rec(self.metadata),
                "objects": _rec(self.objects), "scene": _rec(self.scene), "text": _rec(self.text),
                "faces": _rec(self.faces), "embedding": _rec(self.embedding),
                "stages": [_rec(x) for x in self.stages], "aggregated_at": self.aggregated_at}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ImageAggregated:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"],
                   status=AnalysisStatus(d["status"]),
                   prepared=_opt(ImagePrepared.from_avro, d.get("prepared", None)),
                   metadata=_opt(MetadataResult.from_avro, d.get("metadata", None)),
                   objects=_opt(ObjectsResult.from_avro, d.get("objects", None)),
                   scene=_opt(SceneResult.from_avro, d.get("scene", None)),
                   text=_opt(TextResult.from_avro, d.get("text", None)),
                   faces=_opt(FacesResult.from_avro, d.get("faces", None)),
                   embedding=_opt(EmbeddingResult.from_avro, d.get("embedding", None)),
                   stages=[StageSummary.from_avro(x) for x in d.get("stages", [])],
                   aggregated_at=d["aggregated_at"])


@_dc.dataclass(slots=True, kw_only=True)
class ImageAnalyzed(AvroRecord):
    """Final notification on images.analyzed: the image is stored and searchable."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.ImageAnalyzed"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "analysis_version", "status",
                                              "error", "stages", "uri", "caption", "tags", "taken_at",
                                              "uploaded_at", "analyzed_at", "summary")

    #: Image identity.
    image_id: str
    #: Owner.
    user_id: str
    #: Run identity.
    run_id: str
    #: Increments on every stored analysis or re-analysis of this image.
    analysis_version: int
    #: complete, partial or failed.
    status: AnalysisStatus
    #: Why the image failed, when it did.
    error: StageError | None = None
    #: Every stage's outcome.
    stages: list[StageSummary] = _dc.field(default_factory=list)
    #: Normalised derivative.
    uri: str | None = None
    #: Caption when described.
    caption: str | None = None
    #: Tags written to the tag tables.
    tags: list[Tag] = _dc.field(default_factory=list)
    #: Capture time.
    taken_at: datetime | None = None
    #: Upload time.
    uploaded_at: datetime
    #: When the sinks were written.
    analyzed_at: datetime
    #: A summary of the analysis for consumers: text excerpt, counts, people, place, safety (v2; null from v1
    #: producers).
    summary: AnalysisSummary | None = None

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id,
                "analysis_version": self.analysis_version, "status": self.status, "error": _rec(self.error),
                "stages": [_rec(x) for x in self.stages], "uri": self.uri, "caption": self.caption,
                "tags": [_rec(x) for x in self.tags], "taken_at": self.taken_at,
                "uploaded_at": self.uploaded_at, "analyzed_at": self.analyzed_at,
                "summary": _rec(self.summary)}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ImageAnalyzed:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"],
                   analysis_version=d["analysis_version"], status=AnalysisStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   stages=[StageSummary.from_avro(x) for x in d.get("stages", [])], uri=d.get("uri", None),
                   caption=d.get("caption", None), tags=[Tag.from_avro(x) for x in d.get("tags", [])],
                   taken_at=d.get("taken_at", None), uploaded_at=d["uploaded_at"],
                   analyzed_at=d["analyzed_at"],
                   summary=_opt(AnalysisSummary.from_avro, d.get("summary", None)))


@_dc.dataclass(slots=True, kw_only=True)
class ImageDescribed(AvroRecord):
    """Caption and semantic vector on images.described."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.ImageDescribed"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "stage", "model", "status",
                                              "error", "duration_ms", "produced_at", "caption", "text_model",
                                              "semantic_vector")

    #: Image identity; the Kafka key of every record.
    image_id: str
    #: Owner of the image.
    user_id: str
    #: Identity of the analysis run (one upload request or one re-analysis).
    run_id: str
    #: Always 'describe'.
    stage: str
    #: Model (or algorithm) name and version.
    model: ModelRef | None = None
    #: Outcome of this stage for this image.
    status: StageStatus
    #: Set when status is 'failed'.
    error: StageError | None = None
    #: Processing time of this stage for this image, milliseconds.
    duration_ms: float = 0.0
    #: When this record was produced (UTC).
    produced_at: datetime
    #: One grounded sentence.
    caption: str = ""
    #: Text-embedding model of the semantic vector.
    text_model: ModelRef | None = None
    #: L2-normalised text-side vector.
    semantic_vector: list[float] = _dc.field(default_factory=list)

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id, "stage": self.stage,
                "model": _rec(self.model), "status": self.status, "error": _rec(self.error),
                "duration_ms": self.duration_ms, "produced_at": self.produced_at, "caption": self.caption,
                "text_model": _rec(self.text_model), "semantic_vector": self.semantic_vector}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ImageDescribed:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"], stage=d["stage"],
                   model=_opt(ModelRef.from_avro, d.get("model", None)), status=StageStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   duration_ms=d.get("duration_ms", 0.0), produced_at=d["produced_at"],
                   caption=d.get("caption", ""),
                   text_model=_opt(ModelRef.from_avro, d.get("text_model", None)),
                   semantic_vector=d.get("semantic_vector", []))


@_dc.dataclass(slots=True, kw_only=True)
class ImagePrepared(AvroRecord):
    """Result of preprocess on images.prepared: the validated, normalised derivative and the stages the join
    must wait for.
    """

    AVRO_NAME: ClassVar[str] = "lensflow.v1.ImagePrepared"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "stage", "model", "status",
                                              "error", "duration_ms", "produced_at", "source_uri", "uri",
                                              "format", "mime_type", "size_bytes", "sha256", "original_width",
                                              "original_height", "width", "height", "orientation",
                                              "derivative_sha256", "derivative_size_bytes", "expected_stages",
                                              "derived_stages", "uploaded_at", "mode")

    #: Image identity; the Kafka key of every record.
    image_id: str
    #: Owner of the image.
    user_id: str
    #: Identity of the analysis run (one upload request or one re-analysis).
    run_id: str
    #: Always 'preprocess'.
    stage: str
    #: Model (or algorithm) name and version.
    model: ModelRef | None = None
    #: Outcome of this stage for this image.
    status: StageStatus
    #: Set when status is 'failed'.
    error: StageError | None = None
    #: Processing time of this stage for this image, milliseconds.
    duration_ms: float = 0.0
    #: When this record was produced (UTC).
    produced_at: datetime
    #: URI of the original.
    source_uri: str
    #: URI of the normalised derivative (EXIF orientation applied, long side capped); null when failed.
    uri: str | None = None
    #: Sniffed format of the original: JPEG, PNG, WEBP, GIF, TIFF, BMP, HEIF, AVIF.
    format: str | None = None
    #: MIME type of the original.
    mime_type: str | None = None
    #: Size of the original in bytes.
    size_bytes: int = 0
    #: SHA-256 of the original bytes (hex).
    sha256: str | None = None
    #: Width of the original after EXIF orientation.
    original_width: int = 0
    #: Height of the original after EXIF orientation.
    original_height: int = 0
    #: Width of the derivative.
    width: int = 0
    #: Height of the derivative.
    height: int = 0
    #: EXIF orientation (1-8) that was applied.
    orientation: int = 1
    #: SHA-256 of the derivative bytes (hex).
    derivative_sha256: str | None = None
    #: Size of the derivative in bytes.
    derivative_size_bytes: int = 0
    #: Stages the join waits for (pixel stages and metadata).
    expected_stages: list[str] = _dc.field(default_factory=list)
    #: Stages that read the join's aggregate (e.g. describe).
    derived_stages: list[str] = _dc.field(default_factory=list)
    #: Upload time, copied from ImageUploaded.
    uploaded_at: datetime
    #: 'full': a new analysis of the image; 'merge': a re-analysis of the listed stages, merged by the join
    #: into the stored aggregate without touching the other stages.
    mode: str = "full"

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id, "stage": self.stage,
                "model": _rec(self.model), "status": self.status, "error": _rec(self.error),
                "duration_ms": self.duration_ms, "produced_at": self.produced_at,
                "source_uri": self.source_uri, "uri": self.uri, "format": self.format,
                "mime_type": self.mime_type, "size_bytes": self.size_bytes, "sha256": self.sha256,
                "original_width": self.original_width, "original_height": self.original_height,
                "width": self.width, "height": self.height, "orientation": self.orientation,
                "derivative_sha256": self.derivative_sha256,
                "derivative_size_bytes": self.derivative_size_bytes, "expected_stages": self.expected_stages,
                "derived_stages": self.derived_stages, "uploaded_at": self.uploaded_at, "mode": self.mode}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ImagePrepared:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"], stage=d["stage"],
                   model=_opt(ModelRef.from_avro, d.get("model", None)), status=StageStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   duration_ms=d.get("duration_ms", 0.0), produced_at=d["produced_at"],
                   source_uri=d["source_uri"], uri=d.get("uri", None), format=d.get("format", None),
                   mime_type=d.get("mime_type", None), size_bytes=d.get("size_bytes", 0),
                   sha256=d.get("sha256", None), original_width=d.get("original_width", 0),
                   original_height=d.get("original_height", 0), width=d.get("width", 0),
                   height=d.get("height", 0), orientation=d.get("orientation", 1),
                   derivative_sha256=d.get("derivative_sha256", None),
                   derivative_size_bytes=d.get("derivative_size_bytes", 0),
                   expected_stages=d.get("expected_stages", []), derived_stages=d.get("derived_stages", []),
                   uploaded_at=d["uploaded_at"], mode=d.get("mode", "full"))


@_dc.dataclass(slots=True, kw_only=True)
class ImageUploaded(AvroRecord):
    """One uploaded image, produced by upstream services on images.uploaded. Carries a reference, never pixels.
    """

    AVRO_NAME: ClassVar[str] = "lensflow.v1.ImageUploaded"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "uri", "content_type",
                                              "size_bytes", "uploaded_at", "stages", "source", "attributes")

    #: Image identity chosen by the producer; the Kafka key.
    image_id: str
    #: Owner of the image.
    user_id: str
    #: Request identity (a UUID); re-delivery of the same event is idempotent.
    run_id: str
    #: Where the original lies: an fsspec URL inside a configured storage root.
    uri: str
    #: MIME type claimed by the producer (advisory; the bytes are sniffed).
    content_type: str | None = None
    #: Size claimed by the producer (advisory).
    size_bytes: int | None = None
    #: Upload time (UTC).
    uploaded_at: datetime
    #: Stages to run for this image; null means the configured default set.
    stages: list[str] | None = None
    #: Free-form producer name, e.g. 'lensflow-cli'.
    source: str | None = None
    #: Producer attributes passed through untouched.
    attributes: dict[str, str] = _dc.field(default_factory=dict)

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id, "uri": self.uri,
                "content_type": self.content_type, "size_bytes": self.size_bytes,
                "uploaded_at": self.uploaded_at, "stages": self.stages, "source": self.source,
                "attributes": self.attributes}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ImageUploaded:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"], uri=d["uri"],
                   content_type=d.get("content_type", None), size_bytes=d.get("size_bytes", None),
                   uploaded_at=d["uploaded_at"], stages=d.get("stages", None), source=d.get("source", None),
                   attributes=d.get("attributes", {}))


@_dc.dataclass(slots=True, kw_only=True)
class JoinTick(AvroRecord):
    """Internal: a timer's nudge to the join, on lensflow.join.ticks, keyed by image_id so it lands on the
    join's partition (Faust tables can only be written from inside stream iteration).
    """

    AVRO_NAME: ClassVar[str] = "lensflow.v1.JoinTick"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "reason", "produced_at")

    #: Image whose join deadline passed.
    image_id: str
    #: timeout
    reason: str
    #: When produced.
    produced_at: datetime

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "reason": self.reason, "produced_at": self.produced_at}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> JoinTick:
        return cls(image_id=d["image_id"], reason=d["reason"], produced_at=d["produced_at"])


@_dc.dataclass(slots=True, kw_only=True)
class Label(AvroRecord):
    """A label with its score in [0, 1]."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.Label"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("label", "score")

    #: Label name.
    label: str
    #: Score in [0, 1].
    score: float

    def to_avro(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Label:
        return cls(label=d["label"], score=d["score"])


@_dc.dataclass(slots=True, kw_only=True)
class MetadataResult(AvroRecord):
    """Metadata of the original on analysis.metadata: EXIF, XMP and IPTC, and the place its GPS position names.
    """

    AVRO_NAME: ClassVar[str] = "lensflow.v1.MetadataResult"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "stage", "model", "status",
                                              "error", "duration_ms", "produced_at", "taken_at",
                                              "taken_at_local", "tz_offset", "camera_make", "camera_model",
                                              "lens_make", "lens_model", "software", "exposure_time_s",
                                              "f_number", "iso", "focal_length_mm", "focal_length_35mm", "gps",
                                              "width", "height", "orientation", "title", "description",
                                              "keywords", "rating", "creator", "place", "warnings")

    #: Image identity; the Kafka key of every record.
    image_id: str
    #: Owner of the image.
    user_id: str
    #: Identity of the analysis run (one upload request or one re-analysis).
    run_id: str
    #: Always 'metadata'.
    stage: str
    #: Model (or algorithm) name and version.
    model: ModelRef | None = None
    #: Outcome of this stage for this image.
    status: StageStatus
    #: Set when status is 'failed'.
    error: StageError | None = None
    #: Processing time of this stage for this image, milliseconds.
    duration_ms: float = 0.0
    #: When this record was produced (UTC).
    produced_at: datetime
    #: When the photo was taken, UTC. If the file has no UTC offset, this is the local wall-clock time read as
    #: UTC and tz_offset is null.
    taken_at: datetime | None = None
    #: Wall-clock capture time as written in the file, ISO 8601 without offset.
    taken_at_local: str | None = None
    #: UTC offset of the capture time, '+HH:MM', when the file has one.
    tz_offset: str | None = None
    #: EXIF Make, else XMP tiff:Make.
    camera_make: str | None = None
    #: EXIF Model, else XMP tiff:Model.
    camera_model: str | None = None
    #: EXIF LensMake.
    lens_make: str | None = None
    #: EXIF LensModel.
    lens_model: str | None = None
    #: EXIF Software.
    software: str | None = None
    #: Exposure time, seconds.
    exposure_time_s: float | None = None
    #: Aperture f-number.
    f_number: float | None = None
    #: ISO speed.
    iso: int | None = None
    #: Focal length, mm.
    focal_length_mm: float | None = None
    #: 35 mm equivalent focal length, mm.
    focal_length_35mm: int | None = None
    #: Capture position when present and in range.
    gps: GeoPoint | None = None
    #: Pixel width of the original as stored (before orientation).
    width: int = 0
    #: Pixel height of the original as stored (before orientation).
    height: int = 0
    #: EXIF orientation 1-8 (1 when absent).
    orientation: int = 1
    #: Title: EXIF XPTitle, else XMP dc:title (x-default), else IPTC 2:05 Object Name.
    title: str | None = None
    #: Description or caption: EXIF ImageDescription (camera placeholders ignored), else XMP dc:description,
    #: else IPTC 2:120 Caption/Abstract. At most 2,000 characters.
    description: str | None = None
    #: Keywords: EXIF XPKeywords, XMP dc:subject and IPTC 2:25, merged in that order without case-insensitive
    #: duplicates (at most 100).
    keywords: list[str] = _dc.field(default_factory=list)
    #: Star rating -1..5 (-1 rejected, 0 not rated): EXIF Rating, else XMP xmp:Rating.
    rating: int | None = None
    #: Creator(s), '; '-joined: EXIF Artist, else EXIF XPAuthor, else XMP dc:creator, else IPTC 2:80 By-line.
    creator: str | None = None
    #: Nearest populated place to gps (offline GeoNames lookup), when one is within 50 km.
    place: Place | None = None
    #: Values that were present but dropped (out of range, unparseable, unsafe or oversized XMP/IPTC), and
    #: places that could not be looked up.
    warnings: list[str] = _dc.field(default_factory=list)

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id, "stage": self.stage,
                "model": _rec(self.model), "status": self.status, "error": _rec(self.error),
                "duration_ms": self.duration_ms, "produced_at": self.produced_at, "taken_at": self.taken_at,
                "taken_at_local": self.taken_at_local, "tz_offset": self.tz_offset,
                "camera_make": self.camera_make, "camera_model": self.camera_model,
                "lens_make": self.lens_make, "lens_model": self.lens_model, "software": self.software,
                "exposure_time_s": self.exposure_time_s, "f_number": self.f_number, "iso": self.iso,
                "focal_length_mm": self.focal_length_mm, "focal_length_35mm": self.focal_length_35mm,
                "gps": _rec(self.gps), "width": self.width, "height": self.height,
                "orientation": self.orientation, "title": self.title, "description": self.description,
                "keywords": self.keywords, "rating": self.rating, "creator": self.creator,
                "place": _rec(self.place), "warnings": self.warnings}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> MetadataResult:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"], stage=d["stage"],
                   model=_opt(ModelRef.from_avro, d.get("model", None)), status=StageStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   duration_ms=d.get("duration_ms", 0.0), produced_at=d["produced_at"],
                   taken_at=d.get("taken_at", None), taken_at_local=d.get("taken_at_local", None),
                   tz_offset=d.get("tz_offset", None), camera_make=d.get("camera_make", None),
                   camera_model=d.get("camera_model", None), lens_make=d.get("lens_make", None),
                   lens_model=d.get("lens_model", None), software=d.get("software", None),
                   exposure_time_s=d.get("exposure_time_s", None), f_number=d.get("f_number", None),
                   iso=d.get("iso", None), focal_length_mm=d.get("focal_length_mm", None),
                   focal_length_35mm=d.get("focal_length_35mm", None),
                   gps=_opt(GeoPoint.from_avro, d.get("gps", None)), width=d.get("width", 0),
                   height=d.get("height", 0), orientation=d.get("orientation", 1), title=d.get("title", None),
                   description=d.get("description", None), keywords=d.get("keywords", []),
                   rating=d.get("rating", None), creator=d.get("creator", None),
                   place=_opt(Place.from_avro, d.get("place", None)), warnings=d.get("warnings", []))


@_dc.dataclass(slots=True, kw_only=True)
class ModelRef(AvroRecord):
    """The model (or algorithm) that produced a result; its version is part of every result so re-analysis can
    target old versions.
    """

    AVRO_NAME: ClassVar[str] = "lensflow.v1.ModelRef"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("name", "version", "sha256")

    #: Model name, e.g. 'efficientnet-lite0'.
    name: str
    #: Model version; a change makes re-analysis possible.
    version: str
    #: Checksum of the weights file when there is one.
    sha256: str | None = None

    def to_avro(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ModelRef:
        return cls(name=d["name"], version=d["version"], sha256=d.get("sha256", None))


@_dc.dataclass(slots=True, kw_only=True)
class ObjectsResult(AvroRecord):
    """Object detections on analysis.objects."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.ObjectsResult"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "stage", "model", "status",
                                              "error", "duration_ms", "produced_at", "detections")

    #: Image identity; the Kafka key of every record.
    image_id: str
    #: Owner of the image.
    user_id: str
    #: Identity of the analysis run (one upload request or one re-analysis).
    run_id: str
    #: Always 'objects'.
    stage: str
    #: Model (or algorithm) name and version.
    model: ModelRef | None = None
    #: Outcome of this stage for this image.
    status: StageStatus
    #: Set when status is 'failed'.
    error: StageError | None = None
    #: Processing time of this stage for this image, milliseconds.
    duration_ms: float = 0.0
    #: When this record was produced (UTC).
    produced_at: datetime
    #: Detections after NMS and threshold, best first.
    detections: list[Detection] = _dc.field(default_factory=list)

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id, "stage": self.stage,
                "model": _rec(self.model), "status": self.status, "error": _rec(self.error),
                "duration_ms": self.duration_ms, "produced_at": self.produced_at,
                "detections": [_rec(x) for x in self.detections]}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> ObjectsResult:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"], stage=d["stage"],
                   model=_opt(ModelRef.from_avro, d.get("model", None)), status=StageStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   duration_ms=d.get("duration_ms", 0.0), produced_at=d["produced_at"],
                   detections=[Detection.from_avro(x) for x in d.get("detections", [])])


@_dc.dataclass(slots=True, kw_only=True)
class Place(AvroRecord):
    """The populated place nearest to a GPS position (GeoNames places of 1,000+ people, offline reverse
    geocoding).
    """

    AVRO_NAME: ClassVar[str] = "lensflow.v1.Place"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("city", "region", "country", "country_code", "distance_km")

    #: Name of the nearest place (a town, a city, or a district of a large city).
    city: str
    #: First-level administrative region (state, province, Land), when GeoNames has one.
    region: str | None = None
    #: Country name, English.
    country: str | None = None
    #: ISO 3166-1 alpha-2 country code.
    country_code: str
    #: Great-circle distance from the position to the place, km (never over the cap, 50 km).
    distance_km: float

    def to_avro(self) -> dict[str, Any]:
        return {"city": self.city, "region": self.region, "country": self.country,
                "country_code": self.country_code, "distance_km": self.distance_km}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Place:
        return cls(city=d["city"], region=d.get("region", None), country=d.get("country", None),
                   country_code=d["country_code"], distance_km=d["distance_km"])


@_dc.dataclass(slots=True, kw_only=True)
class Point(AvroRecord):
    """A point in original-image pixel coordinates."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.Point"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("x", "y")

    #: x
    x: float
    #: y
    y: float

    def to_avro(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Point:
        return cls(x=d["x"], y=d["y"])


@_dc.dataclass(slots=True, kw_only=True)
class SafetyResult(AvroRecord):
    """NSFW score on analysis.safety."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.SafetyResult"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "stage", "model", "status",
                                              "error", "duration_ms", "produced_at", "nsfw_score", "unsafe",
                                              "threshold")

    #: Image identity; the Kafka key of every record.
    image_id: str
    #: Owner of the image.
    user_id: str
    #: Identity of the analysis run (one upload request or one re-analysis).
    run_id: str
    #: Always 'safety'.
    stage: str
    #: Model (or algorithm) name and version.
    model: ModelRef | None = None
    #: Outcome of this stage for this image.
    status: StageStatus
    #: Set when status is 'failed'.
    error: StageError | None = None
    #: Processing time of this stage for this image, milliseconds.
    duration_ms: float = 0.0
    #: When this record was produced (UTC).
    produced_at: datetime
    #: Probability that the image is not safe for work (open_nsfw), 0-1; null when the stage failed.
    nsfw_score: float | None = None
    #: nsfw_score >= threshold.
    unsafe: bool = False
    #: The threshold in force when the image was scored (LENSFLOW_SAFETY_THRESHOLD).
    threshold: float = 0.5

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id, "stage": self.stage,
                "model": _rec(self.model), "status": self.status, "error": _rec(self.error),
                "duration_ms": self.duration_ms, "produced_at": self.produced_at,
                "nsfw_score": self.nsfw_score, "unsafe": self.unsafe, "threshold": self.threshold}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> SafetyResult:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"], stage=d["stage"],
                   model=_opt(ModelRef.from_avro, d.get("model", None)), status=StageStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   duration_ms=d.get("duration_ms", 0.0), produced_at=d["produced_at"],
                   nsfw_score=d.get("nsfw_score", None), unsafe=d.get("unsafe", False),
                   threshold=d.get("threshold", 0.5))


@_dc.dataclass(slots=True, kw_only=True)
class SceneResult(AvroRecord):
    """Scene classification on analysis.scene."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.SceneResult"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "stage", "model", "status",
                                              "error", "duration_ms", "produced_at", "environment", "places",
                                              "events", "classes")

    #: Image identity; the Kafka key of every record.
    image_id: str
    #: Owner of the image.
    user_id: str
    #: Identity of the analysis run (one upload request or one re-analysis).
    run_id: str
    #: Always 'scene'.
    stage: str
    #: Model (or algorithm) name and version.
    model: ModelRef | None = None
    #: Outcome of this stage for this image.
    status: StageStatus
    #: Set when status is 'failed'.
    error: StageError | None = None
    #: Processing time of this stage for this image, milliseconds.
    duration_ms: float = 0.0
    #: When this record was produced (UTC).
    produced_at: datetime
    #: indoor or outdoor with a score.
    environment: Label | None = None
    #: Place types (beach, street, kitchen, ...), best first.
    places: list[Label] = _dc.field(default_factory=list)
    #: Event types (wedding, concert, sport, ...), best first.
    events: list[Label] = _dc.field(default_factory=list)
    #: Raw classifier top-k (ImageNet-1k for the default model).
    classes: list[Label] = _dc.field(default_factory=list)

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id, "stage": self.stage,
                "model": _rec(self.model), "status": self.status, "error": _rec(self.error),
                "duration_ms": self.duration_ms, "produced_at": self.produced_at,
                "environment": _rec(self.environment), "places": [_rec(x) for x in self.places],
                "events": [_rec(x) for x in self.events], "classes": [_rec(x) for x in self.classes]}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> SceneResult:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"], stage=d["stage"],
                   model=_opt(ModelRef.from_avro, d.get("model", None)), status=StageStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   duration_ms=d.get("duration_ms", 0.0), produced_at=d["produced_at"],
                   environment=_opt(Label.from_avro, d.get("environment", None)),
                   places=[Label.from_avro(x) for x in d.get("places", [])],
                   events=[Label.from_avro(x) for x in d.get("events", [])],
                   classes=[Label.from_avro(x) for x in d.get("classes", [])])


@_dc.dataclass(slots=True, kw_only=True)
class StageError(AvroRecord):
    """Why a stage failed: a short machine-readable code and a human message."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.StageError"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("code", "message", "retryable", "attempts")

    #: Machine-readable reason, e.g. 'not_an_image', 'too_many_pixels', 'fetch_failed'.
    code: str
    #: One human-readable line.
    message: str
    #: True when the fault was transient (retries were exhausted).
    retryable: bool = False
    #: How many attempts were made.
    attempts: int = 1

    def to_avro(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable,
                "attempts": self.attempts}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> StageError:
        return cls(code=d["code"], message=d["message"], retryable=d.get("retryable", False),
                   attempts=d.get("attempts", 1))


@_dc.dataclass(slots=True, kw_only=True)
class StageSummary(AvroRecord):
    """One stage's outcome inside an aggregate."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.StageSummary"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("stage", "status", "error", "duration_ms", "model")

    #: Stage name.
    stage: str
    #: Outcome.
    status: StageStatus
    #: Why it failed.
    error: StageError | None = None
    #: Processing time inside the stage.
    duration_ms: float = 0.0
    #: Model that produced it.
    model: ModelRef | None = None

    def to_avro(self) -> dict[str, Any]:
        return {"stage": self.stage, "status": self.status, "error": _rec(self.error),
                "duration_ms": self.duration_ms, "model": _rec(self.model)}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> StageSummary:
        return cls(stage=d["stage"], status=StageStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   duration_ms=d.get("duration_ms", 0.0), model=_opt(ModelRef.from_avro, d.get("model", None)))


@_dc.dataclass(slots=True, kw_only=True)
class Tag(AvroRecord):
    """A searchable tag of an image."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.Tag"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("kind", "tag", "score")

    #: object | scene | place | event | person | camera | year | text
    kind: str
    #: The tag value, lower case.
    tag: str
    #: Confidence in [0, 1].
    score: float = 1.0

    def to_avro(self) -> dict[str, Any]:
        return {"kind": self.kind, "tag": self.tag, "score": self.score}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> Tag:
        return cls(kind=d["kind"], tag=d["tag"], score=d.get("score", 1.0))


@_dc.dataclass(slots=True, kw_only=True)
class TextLine(AvroRecord):
    """One recognised line."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.TextLine"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("text", "confidence", "box")

    #: Line text.
    text: str
    #: Recognition score in [0, 1].
    confidence: float
    #: Bounding box in original-image pixels.
    box: Box

    def to_avro(self) -> dict[str, Any]:
        return {"text": self.text, "confidence": self.confidence, "box": _rec(self.box)}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> TextLine:
        return cls(text=d["text"], confidence=d["confidence"], box=Box.from_avro(d["box"]))


@_dc.dataclass(slots=True, kw_only=True)
class TextResult(AvroRecord):
    """OCR on analysis.text."""

    AVRO_NAME: ClassVar[str] = "lensflow.v1.TextResult"
    AVRO_FIELDS: ClassVar[tuple[str, ...]] = ("image_id", "user_id", "run_id", "stage", "model", "status",
                                              "error", "duration_ms", "produced_at", "text", "language",
                                              "script", "lines")

    #: Image identity; the Kafka key of every record.
    image_id: str
    #: Owner of the image.
    user_id: str
    #: Identity of the analysis run (one upload request or one re-analysis).
    run_id: str
    #: Always 'text'.
    stage: str
    #: Model (or algorithm) name and version.
    model: ModelRef | None = None
    #: Outcome of this stage for this image.
    status: StageStatus
    #: Set when status is 'failed'.
    error: StageError | None = None
    #: Processing time of this stage for this image, milliseconds.
    duration_ms: float = 0.0
    #: When this record was produced (UTC).
    produced_at: datetime
    #: Cleaned full text: spacing restored, whitespace normalised, junk dropped.
    text: str = ""
    #: Detected language (ISO 639-1).
    language: str | None = None
    #: ISO 15924 script of most of the text's letters (Latn, Cyrl, Hani, Jpan, Hang); null without letters.
    script: str | None = None
    #: Lines in reading order.
    lines: list[TextLine] = _dc.field(default_factory=list)

    def to_avro(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "user_id": self.user_id, "run_id": self.run_id, "stage": self.stage,
                "model": _rec(self.model), "status": self.status, "error": _rec(self.error),
                "duration_ms": self.duration_ms, "produced_at": self.produced_at, "text": self.text,
                "language": self.language, "script": self.script, "lines": [_rec(x) for x in self.lines]}

    @classmethod
    def from_avro(cls, d: Mapping[str, Any]) -> TextResult:
        return cls(image_id=d["image_id"], user_id=d["user_id"], run_id=d["run_id"], stage=d["stage"],
                   model=_opt(ModelRef.from_avro, d.get("model", None)), status=StageStatus(d["status"]),
                   error=_opt(StageError.from_avro, d.get("error", None)),
                   duration_ms=d.get("duration_ms", 0.0), produced_at=d["produced_at"], text=d.get("text", ""),
                   language=d.get("language", None), script=d.get("script", None),
                   lines=[TextLine.from_avro(x) for x in d.get("lines", [])])


#: Every record type by its Avro full name.
RECORDS: dict[str, type[AvroRecord]] = {
    "lensflow.v1.AnalysisSummary": AnalysisSummary,
    "lensflow.v1.Box": Box,
    "lensflow.v1.CacheInvalidation": CacheInvalidation,
    "lensflow.v1.DeadLetter": DeadLetter,
    "lensflow.v1.DeadLetterInput": DeadLetterInput,
    "lensflow.v1.Detection": Detection,
    "lensflow.v1.EmbeddingResult": EmbeddingResult,
    "lensflow.v1.Face": Face,
    "lensflow.v1.FacesResult": FacesResult,
    "lensflow.v1.GeoPoint": GeoPoint,
    "lensflow.v1.ImageAggregated": ImageAggregated,
    "lensflow.v1.ImageAnalyzed": ImageAnalyzed,
    "lensflow.v1.ImageDescribed": ImageDescribed,
    "lensflow.v1.ImagePrepared": ImagePrepared,
    "lensflow.v1.ImageUploaded": ImageUploaded,
    "lensflow.v1.JoinTick": JoinTick,
    "lensflow.v1.Label": Label,
    "lensflow.v1.MetadataResult": MetadataResult,
    "lensflow.v1.ModelRef": ModelRef,
    "lensflow.v1.ObjectsResult": ObjectsResult,
    "lensflow.v1.Place": Place,
    "lensflow.v1.Point": Point,
    "lensflow.v1.SafetyResult": SafetyResult,
    "lensflow.v1.SceneResult": SceneResult,
    "lensflow.v1.StageError": StageError,
    "lensflow.v1.StageSummary": StageSummary,
    "lensflow.v1.Tag": Tag,
    "lensflow.v1.TextLine": TextLine,
    "lensflow.v1.TextResult": TextResult,
}

#: Every enum by its Avro full name.
ENUMS: dict[str, type[StrEnum]] = {
    "lensflow.v1.AnalysisStatus": AnalysisStatus,
    "lensflow.v1.StageStatus": StageStatus,
}


def record_type(name: str) -> type[AvroRecord]:
    """The generated type of the record ``name`` (short, e.g. ``ObjectsResult``, or full)."""
    return RECORDS[name if "." in name else "lensflow.v1." + name]
