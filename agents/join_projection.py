"""The join's projection, pure: from the decoded records of one image to everything the stores and
the notifications need (``assemble``), and the phase-1 aggregate the derived stages read
(``aggregated_record``). Tags are chosen here, in one place.

The records it builds (``ImageAnalyzed``, ``CacheInvalidation``, ``ImageAggregated`` and their
``StageSummary``-s) are the generated types; the stage records inside them are the ones the join
decoded, embedded as they are (dicts)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lensflow.streams.avro_types import (AnalysisSummary, AvroRecord, CacheInvalidation, ImageAggregated, ImageAnalyzed,
                                        StageError, StageSummary, Tag)
from lensflow.streams.errors import ErrorCode
from lensflow.streams.records import ImageStatus, Status, now, point_id
from lensflow.streams.view import analysis_of, summary_of

from .join_state import PREPROCESS
from .metadata import camera_name

DESCRIBED_STAGE = "describe"
CACHE_KEYS = ("image:{image_id}", "user:{user_id}:gallery", "user:{user_id}:tags")


def _summary(stage: str, rec: dict | None, missing_code: str = ErrorCode.TIMEOUT) -> StageSummary:
    if rec is None:
        return StageSummary(stage=stage, status=Status.FAILED, duration_ms=0.0, model=None,
                            error=StageError(code=str(missing_code), message=f"no {stage} result before the join deadline",
                                             retryable=True, attempts=1))
    return StageSummary(stage=stage, status=rec["status"], error=rec.get("error"), duration_ms=rec.get("duration_ms", 0.0),
                        model=rec.get("model"))


def tags_of(results: dict[str, dict]) -> list[dict]:
    """Searchable tags from stage results; one function so every stage's tags are chosen in one place."""
    tags: dict[tuple[str, str], float] = {}

    def add(kind: str, tag: str | None, score: float = 1.0) -> None:
        if tag:
            key = (kind, " ".join(str(tag).lower().split()))
            tags[key] = max(tags.get(key, 0.0), float(score))

    md = results.get("metadata")
    if md and md["status"] == Status.OK:
        add("camera", camera_name(md.get("camera_make"), md.get("camera_model")))
        if md.get("taken_at"):
            add("year", str(md["taken_at"].year))
        place = md.get("place") or {}
        for key in ("city", "region", "country"):
            add("place", place.get(key))
        for keyword in md.get("keywords") or []:
            add("keyword", keyword)
    obj = results.get("objects")
    if obj and obj["status"] == Status.OK:
        for d in obj.get("detections", []):
            add("object", d["label"], d["confidence"])
    sc = results.get("scene")
    if sc and sc["status"] == Status.OK:
        if sc.get("environment"):
            add("scene", sc["environment"]["label"], sc["environment"]["score"])
        for lab in sc.get("places", []):
            add("place", lab["label"], lab["score"])
        for lab in sc.get("events", []):
            add("event", lab["label"], lab["score"])
        from .concepts import concepts_of

        for c in concepts_of(sc.get("classes") or []):
            for tag in c.tags:
                add("concept", tag, c.score)
    sf = results.get("safety")
    if sf and sf["status"] == Status.OK and sf.get("unsafe"):
        add("safety", "nsfw", sf.get("nsfw_score") or 1.0)
    fc = results.get("faces")
    if fc and fc["status"] == Status.OK:
        for f in fc.get("faces", []):
            add("person", f.get("person_name") or f.get("person_id"), 1.0)
    return [{"kind": k, "tag": t, "score": s} for (k, t), s in sorted(tags.items())]


def _tags(tags: list[dict]) -> list[Tag]:
    """``tags_of``'s tags (the stores' rows read them as mappings) as the ``Tag``-s ImageAnalyzed carries."""
    return [Tag(kind=t["kind"], tag=t["tag"], score=t["score"]) for t in tags]


#: Characters of keyword text stored per image (caption, tags, OCR text, title, description, keywords, place).
KEYWORD_CHARS = 4000


def keywords_of(caption: str | None, tags: list[dict], results: dict[str, dict]) -> str:
    """The words keyword search matches (Qdrant payload ``keywords``, lower case): the caption, the
    tags, the OCR text and the metadata's title, description, keywords and place."""
    parts = [caption or ""] + [t["tag"] for t in tags]
    text = results.get("text")
    if text and text.get("status") == Status.OK:
        parts.append(text.get("text") or "")
    md = results.get("metadata")
    if md and md.get("status") == Status.OK:
        parts += [md.get("title") or "", md.get("description") or "", *(md.get("keywords") or [])]
        place = md.get("place") or {}
        parts += [place.get(k) or "" for k in ("city", "region", "country")]
    return " ".join(" ".join(p.split()) for p in parts if p).lower()[:KEYWORD_CHARS]


@dataclass
class Completed:
    image_id: str
    user_id: str
    run_id: str
    version: int
    status: ImageStatus
    image_row: dict
    analysis_row: dict
    tags: list[dict]
    point: dict | None  # None: nothing to upsert in Qdrant
    analyzed: ImageAnalyzed
    invalidation: CacheInvalidation
    first_write: bool = False  # no earlier row: the sink can skip reading old tags


def _jsonable(value: Any) -> Any:
    if isinstance(value, AvroRecord):
        return _jsonable(value.to_avro())
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def overall_status(prepared: dict | None, summaries: list[StageSummary]) -> ImageStatus:
    if prepared is None or prepared["status"] == Status.FAILED:
        return ImageStatus.FAILED
    return ImageStatus.COMPLETE if all(s.status == Status.OK for s in summaries) else ImageStatus.PARTIAL


def with_refined_scene(results: dict[str, dict]) -> dict[str, dict]:
    """The scene as the aggregate presents it: the scene stage's labels plus what the objects stage
    found (scene and objects run in parallel, so only the join has both)."""
    scene, objects = results.get("scene"), results.get("objects")
    if not scene or scene.get("status") != Status.OK or not objects or objects.get("status") != Status.OK:
        return results
    from .scene import refine

    return {**results, "scene": {**scene, **refine(scene, objects.get("detections"))}}


def assemble(prepared: dict, results: dict[str, dict], raw: dict[str, bytes], stages: list[str], version: int,
             reason: str = "analyzed") -> Completed:
    """Everything the sinks and the notifications need, from the decoded records of one image."""
    results = with_refined_scene(results)
    image_id, user_id, run_id = prepared["image_id"], prepared["user_id"], prepared["run_id"]
    summaries = [_summary(PREPROCESS, prepared)] + [_summary(s, results.get(s)) for s in stages]
    status = overall_status(prepared, summaries)
    md = results.get("metadata") if results.get("metadata", {}).get("status") == Status.OK else None
    md = md or {}
    gps = md.get("gps") or {}
    scene = results.get("scene") or {}
    described = results.get(DESCRIBED_STAGE) or {}
    embedding = results.get("embedding") or {}
    safety = results.get("safety") or {}
    nsfw_score = safety.get("nsfw_score") if safety.get("status") == Status.OK else None
    visual = embedding.get("vector") if embedding.get("status") == Status.OK and embedding.get("vector") else None
    err = prepared.get("error") if prepared["status"] == Status.FAILED else None
    analyzed_at = now()
    tags = tags_of(results)
    image_row = {
        "image_id": image_id, "user_id": user_id, "source_uri": prepared.get("source_uri"), "uri": prepared.get("uri"),
        "format": prepared.get("format"), "mime_type": prepared.get("mime_type"), "size_bytes": prepared.get("size_bytes"),
        "sha256": prepared.get("sha256"), "width": prepared.get("width"), "height": prepared.get("height"),
        "original_width": prepared.get("original_width"), "original_height": prepared.get("original_height"),
        "orientation": prepared.get("orientation"),
        **{k: md.get(k) for k in ["taken_at", "taken_at_local", "tz_offset", "camera_make", "camera_model", "lens_make",
                                  "lens_model", "exposure_time_s", "f_number", "iso", "focal_length_mm"]},
        "gps_lat": gps.get("lat"), "gps_lon": gps.get("lon"), "gps_alt_m": gps.get("alt_m"),
        "caption": described.get("caption") or None,
        "scene": (scene.get("places") or [{}])[0].get("label") if scene.get("status") == Status.OK else None,
        "visual": visual, "status": status, "error_code": err["code"] if err else None,
        "error_message": err["message"] if err else None, "run_id": run_id, "analysis_version": version,
        "uploaded_at": prepared.get("uploaded_at"), "last_analyzed": analyzed_at, "nsfw_score": nsfw_score,
        **{f"place_{k}": (md.get("place") or {}).get(k) for k in ("city", "region", "country", "country_code")},
        **{k: md.get(k) for k in ("title", "description", "rating", "creator")}, "keywords": list(md.get("keywords") or []) or None,
    }
    aggregate = {"image_id": image_id, "user_id": user_id, "run_id": run_id, "status": status, "version": version,
                 "prepared": prepared, "results": results, "stages": summaries, "tags": tags}
    analysis_row = {
        "image_id": image_id, "run_id": run_id, "analysis_version": version, "status": status,
        "stage_status": {s.stage: s.status for s in summaries},
        "stage_ms": {s.stage: float(s.duration_ms) for s in summaries},
        "stage_errors": {s.stage: f"{s.error['code']}: {s.error['message']}" for s in summaries if s.error},
        "stage_models": {s.stage: f"{s.model['name']}@{s.model['version']}" for s in summaries if s.model},
        "stage_records": raw, "result_json": json.dumps(_jsonable(aggregate), sort_keys=True),
        "uploaded_at": prepared.get("uploaded_at"), "completed_at": analyzed_at,
    }
    vectors = {}
    if visual:
        vectors["visual"] = visual
    if described.get("semantic_vector"):
        vectors["semantic"] = described["semantic_vector"]
    payload = {"image_id": image_id, "user_id": user_id, "status": status, "tags": [t["tag"] for t in tags],
               "taken_at": md["taken_at"].isoformat() if md.get("taken_at") else None,
               "camera": camera_name(md.get("camera_make"), md.get("camera_model")),
               "geo": {"lat": gps["lat"], "lon": gps["lon"]} if gps else None, "analysis_version": version,
               "nsfw_score": nsfw_score, "keywords": keywords_of(image_row["caption"], tags, results)}
    analyzed = ImageAnalyzed(image_id=image_id, user_id=user_id, run_id=run_id, analysis_version=version, status=status,
                             error=err, stages=summaries, uri=prepared.get("uri"), caption=image_row["caption"],
                             tags=_tags(tags), taken_at=md.get("taken_at"), uploaded_at=prepared["uploaded_at"],
                             analyzed_at=analyzed_at, summary=AnalysisSummary(**summary_of(analysis_of(aggregate))))
    invalidation = CacheInvalidation(image_id=image_id, user_id=user_id, reason=reason, analysis_version=version,
                                     keys=[k.format(image_id=image_id, user_id=user_id) for k in CACHE_KEYS],
                                     produced_at=analyzed_at)
    return Completed(image_id, user_id, run_id, version, status, image_row, analysis_row, tags,
                     {"id": point_id(image_id), "vectors": vectors, "payload": payload}, analyzed, invalidation)


def aggregated_record(prepared: dict, results: dict[str, dict], stages: list[str]) -> ImageAggregated:
    """The phase-1 aggregate for derived stages (ImageAggregated)."""
    results = with_refined_scene(results)
    summaries = [_summary(PREPROCESS, prepared)] + [_summary(s, results.get(s)) for s in stages]
    return ImageAggregated(image_id=prepared["image_id"], user_id=prepared["user_id"], run_id=prepared["run_id"],
                           status=overall_status(prepared, summaries), prepared=prepared, stages=summaries,
                           aggregated_at=now(), metadata=results.get("metadata"), objects=results.get("objects"),
                           scene=results.get("scene"), text=results.get("text"), faces=results.get("faces"),
                           embedding=results.get("embedding"))


def mark_duplicates(c: Completed, exact: list[str], near: list[tuple[str, float]]) -> Completed:
    """``c`` flagged as a duplicate: ``exact`` are the user's other images with the same original bytes,
    ``near`` the others whose visual vector is nearly the same ((image id, similarity)). Stored in
    ``images.duplicate_of`` / ``near_duplicates``, tagged ``duplicate`` / ``near-duplicate`` (kind
    ``duplicate``; ``search --tag duplicate``), and in the Qdrant payload."""
    exact = sorted(set(exact) - {c.image_id})
    near_ids = [i for i, _ in near if i != c.image_id and i not in exact]
    c.image_row["duplicate_of"] = exact or None
    c.image_row["near_duplicates"] = near_ids or None
    tags = [t for t in c.tags if t["kind"] != "duplicate"]
    if exact:
        tags.append({"kind": "duplicate", "tag": "duplicate", "score": 1.0})
    if near_ids:
        tags.append({"kind": "duplicate", "tag": "near-duplicate", "score": max(s for i, s in near if i in near_ids)})
    c.tags = tags
    if c.point is not None:
        c.point["payload"]["duplicate_of"] = exact + near_ids
        c.point["payload"]["tags"] = [t["tag"] for t in tags]
    c.analyzed.tags = _tags(tags)
    return c


def failed_copy(c: Completed, code: ErrorCode, message: str) -> Completed:
    """``c`` as a failed image: what the join stores and announces when a store refused the full
    write for good (no vectors, no tags: only the row saying why)."""
    from dataclasses import replace

    err = StageError(code=str(code), message=message[:500], retryable=False, attempts=1)
    row = {**c.image_row, "visual": None, "nsfw_score": None, "status": ImageStatus.FAILED, "error_code": err.code, "error_message": err.message}
    analysis = {**c.analysis_row, "status": ImageStatus.FAILED}
    analyzed = replace(c.analyzed, status=ImageStatus.FAILED, error=err)
    return replace(c, status=ImageStatus.FAILED, image_row=row, analysis_row=analysis, tags=[], point=None, analyzed=analyzed)
