"""The whole dataflow in one place: every topic, every stage, what each reads and writes.

Nothing else in lensflow names a topic or decides which stage feeds which: the Faust app, `stack up`
(topic creation), the join's completion rule and the Helm chart's stage groups all read this module.

    images.uploaded ─► preprocess ─► images.prepared ─► pixel stages ─► analysis.<stage> ─┐
                          └────────► analysis.metadata ─────────────────────────────────────┤
                                                                                           join ─► Cassandra, Qdrant,
      images.described ◄─ describe ◄─ images.aggregated ◄─ join (phase 1, when derived)  ◄─┘      images.analyzed,
                                                                                                  cache.invalidations
    any stage ─► images.deadletter

Every record is keyed by ``image_id`` (UTF-8 bytes) and every producer uses Kafka's murmur2
partitioner, so all topics the join reads are co-partitioned with its table.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from enum import StrEnum

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    record: str  # Avro record name (lensflow.v1.<record>) of the values
    doc: str
    retention_ms: int = 7 * DAY_MS
    joined: bool = False  # read by the join: must share the join's partition count


class StageKind(StrEnum):
    SOURCE = "source"  # reads uploads
    INLINE = "inline"  # computed inside another stage
    PIXEL = "pixel"  # reads images.prepared
    DERIVED = "derived"  # reads the join's phase-1 aggregate
    SINK = "sink"  # the join


@dataclass(frozen=True)
class StageSpec:
    name: str
    kind: StageKind
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    module: str | None  # lensflow.agents.<module> providing register(app, ctx); None = not built yet
    doc: str
    inside: str | None = None  # for "inline" stages: the stage that computes it
    result_field: str | None = None  # field of the aggregate that holds this stage's result


UPLOADED = "images.uploaded"
PREPARED = "images.prepared"
AGGREGATED = "images.aggregated"
DESCRIBED = "images.described"
ANALYZED = "images.analyzed"
INVALIDATIONS = "cache.invalidations"
DEADLETTER = "images.deadletter"
JOIN_TICKS = "lensflow.join.ticks"

TOPICS: dict[str, TopicSpec] = {
    t.name: t
    for t in [
        TopicSpec(UPLOADED, "ImageUploaded", "One event per uploaded image, from upstream producers."),
        TopicSpec(PREPARED, "ImagePrepared", "Validated, normalised derivative + expected stages.", joined=True),
        TopicSpec("analysis.metadata", "MetadataResult", "EXIF metadata.", joined=True),
        TopicSpec("analysis.objects", "ObjectsResult", "Object detections.", joined=True),
        TopicSpec("analysis.scene", "SceneResult", "Scene classification.", joined=True),
        TopicSpec("analysis.text", "TextResult", "OCR.", joined=True),
        TopicSpec("analysis.faces", "FacesResult", "Faces and person matches.", joined=True),
        TopicSpec("analysis.embedding", "EmbeddingResult", "Visual image vector.", joined=True),
        TopicSpec("analysis.safety", "SafetyResult", "NSFW score.", joined=True),
        TopicSpec(AGGREGATED, "ImageAggregated", "Phase-1 aggregate, read by derived stages."),
        TopicSpec(DESCRIBED, "ImageDescribed", "Caption + semantic vector.", joined=True),
        TopicSpec(ANALYZED, "ImageAnalyzed", "Final notification: stored and searchable."),
        TopicSpec(INVALIDATIONS, "CacheInvalidation", "Cache keys made stale by a write."),
        TopicSpec(DEADLETTER, "DeadLetter", "Records a stage gave up on, replayable.", retention_ms=30 * DAY_MS),
        TopicSpec(JOIN_TICKS, "JoinTick", "Internal: deadline nudges for the join.", retention_ms=DAY_MS, joined=True),
    ]
}

STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in [
        StageSpec("preprocess", StageKind.SOURCE, (UPLOADED,), (PREPARED, "analysis.metadata", DEADLETTER), "preprocess",
                  "fetch, sniff, validate limits, decode, EXIF transpose, resize, store derivative"),
        StageSpec("metadata", StageKind.INLINE, (), ("analysis.metadata",), "metadata",
                  "EXIF date, camera, lens, exposure, GPS from the original bytes", inside="preprocess",
                  result_field="metadata"),
        StageSpec("objects", StageKind.PIXEL, (PREPARED,), ("analysis.objects",), "objects", "object detection", result_field="objects"),
        StageSpec("scene", StageKind.PIXEL, (PREPARED,), ("analysis.scene",), "visual", "scene classification", result_field="scene"),
        StageSpec("text", StageKind.PIXEL, (PREPARED,), ("analysis.text",), "text", "OCR", result_field="text"),
        StageSpec("faces", StageKind.PIXEL, (PREPARED,), ("analysis.faces",), "faces", "faces + gallery match", result_field="faces"),
        StageSpec("embedding", StageKind.PIXEL, (PREPARED,), ("analysis.embedding",), "visual", "visual vector", result_field="embedding"),
        StageSpec("safety", StageKind.PIXEL, (PREPARED,), ("analysis.safety",), "safety", "NSFW score", result_field="safety"),
        StageSpec("describe", StageKind.DERIVED, (AGGREGATED,), (DESCRIBED,), "describe", "caption + semantic vector", result_field="described"),
        StageSpec("join", StageKind.SINK, tuple(t.name for t in TOPICS.values() if t.joined),
                  (AGGREGATED, ANALYZED, INVALIDATIONS, JOIN_TICKS, DEADLETTER), "join",
                  "aggregate per image, write Cassandra + Qdrant, notify"),
    ]
}

#: Result topic of each analysis stage (what the join waits for), by stage name.
RESULT_TOPIC: dict[str, str] = {s.name: s.writes[0] for s in STAGES.values() if s.kind in ("inline", "pixel", "derived")}
#: Stage name by the Avro record name of its result.
STAGE_OF_RECORD: dict[str, str] = {TOPICS[t].record: s for s, t in RESULT_TOPIC.items()}

#: Analysis stages a user can ask for (results the join waits for).
ANALYSIS_STAGES = tuple(RESULT_TOPIC)
#: Analysis stages that have an implementation today.
AVAILABLE_STAGES = tuple(s for s in ANALYSIS_STAGES if STAGES[s].module is not None)
#: What an image goes through when neither its upload nor LENSFLOW_STAGES says otherwise: the whole
#: analysis (a stage whose model files are missing reports ``model_unavailable``: run `lensflow models prepare`).
DEFAULT_STAGES = AVAILABLE_STAGES
#: Processes a worker can run (``lensflow worker --stages``): stages with their own agent.
RUNNABLE = tuple(s.name for s in STAGES.values() if s.module is not None and s.kind != "inline")


#: The stage groups of a split deployment (what the Helm chart deploys by default): each group runs as
#: its own processes (replicas of a group share its partitions) on its own Kafka consumer group, so two
#: groups reading one topic each get all of it. faces and join both use Qdrant: in local mode only one
#: process may open its folder, so they stay together unless a Qdrant server is configured.
GROUPS: dict[str, tuple[str, ...]] = {
    "preprocess": ("preprocess",),
    "vision": ("objects", "scene", "text", "embedding", "safety"),
    "sink": ("faces", "describe", "join"),
}
#: Stages that open Qdrant (the faces gallery, the join's vectors).
QDRANT_STAGES = ("faces", "join")


def group_name(stages) -> str:
    """The group a set of stages forms: "" for the whole pipeline, a ``GROUPS`` name for one of those,
    else the stage names joined by "-" (valid in Kafka group ids and topic names alike)."""
    chosen = set(stages)
    if chosen == set(RUNNABLE):
        return ""
    for name, members in GROUPS.items():
        if chosen == set(members):
            return name
    return "-".join(sorted(chosen))


def consumer_group(app_id: str, stages, group: str | None = None) -> str:
    """The Kafka consumer group (and Faust app id: the prefix of its changelog topics) of a worker
    running ``stages``: the app id for the whole pipeline, ``<app_id>-<group>`` for a group."""
    name = group if group else group_name(stages)
    return f"{app_id}-{name}" if name else app_id


def split_problem(stages, qdrant_url: str | None) -> str | None:
    """Why a worker running ``stages`` cannot run beside workers running the other stages, or None.

    Without a Qdrant server, Qdrant's local storage admits one process, and the join (which every
    deployment runs) opens it: faces (the gallery) must then run in the join's process. A join
    without faces is fine (faces may not be deployed at all)."""
    chosen = set(stages)
    if not qdrant_url and "faces" in chosen and "join" not in chosen:
        return ("stage faces without join in this process needs a Qdrant server: Qdrant's local storage admits one "
                "process and the join opens it (run faces with join, or set LENSFLOW_QDRANT_URL)")
    return None


def describe_topology(app_id: str) -> dict:
    """The stage graph, the groups and their consumer groups, as JSON (``lensflow topology --json``)."""
    return {
        "stages": {s.name: {"kind": str(s.kind), "reads": list(s.reads), "writes": list(s.writes),
                            "runnable": s.name in RUNNABLE} for s in STAGES.values()},
        "groups": {name: {"stages": list(members), "consumer_group": consumer_group(app_id, members),
                          "reads": sorted({t for m in members for t in STAGES[m].reads}),
                          "needs_qdrant": bool(set(members) & set(QDRANT_STAGES))}
                   for name, members in GROUPS.items()},
        "topics": {t.name: {"record": t.record, "joined": t.joined, "retention_ms": t.retention_ms, "doc": t.doc}
                   for t in TOPICS.values()},
    }


def catalogue_markdown() -> str:
    """The README's topic catalogue (tests/unit/test_docs.py keeps the two equal)."""
    rows = ["| topic | record (`schemas/lensflow.v1.<record>.avsc`) | key | partitions | retention | written by | read by |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for spec in TOPICS.values():
        writers = [s.name for s in STAGES.values() if spec.name in s.writes]
        if spec.name == UPLOADED:
            writers = ["upstream producers, `lensflow submit`, `deadletter replay`"]
        readers = [s.name for s in STAGES.values() if spec.name in s.reads]
        if spec.name in (ANALYZED, INVALIDATIONS):
            readers = ["downstream consumers"]
        if spec.name == DEADLETTER:
            writers, readers = ["every stage (the runner)"], ["`lensflow deadletter`"]
        partitions = "`LENSFLOW_PARTITIONS` (must be equal)" if spec.joined else "`LENSFLOW_PARTITIONS`"
        rows.append(f"| `{spec.name}` | {spec.record} | image id (UTF-8) | {partitions} | {spec.retention_ms // DAY_MS} d "
                    f"| {', '.join(writers)} | {', '.join(readers) or '-'} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class Plan:
    """Which stages one image goes through, split the way the join needs it."""

    expected: list[str] = field(default_factory=list)  # reported before phase 1 completes
    derived: list[str] = field(default_factory=list)  # reported after images.aggregated


def plan_for(requested: list[str] | None, default: list[str]) -> Plan:
    """The stages for one image: the upload's own list when given, else the configured default.

    Unknown or unavailable names raise ValueError (the upload fails with a clear reason).
    ``metadata`` always runs: it costs nothing beyond the preprocess read and is what `show` needs.
    """
    names = list(dict.fromkeys(requested if requested is not None else default))
    bad = [n for n in names if n not in ANALYSIS_STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; known: {list(ANALYSIS_STAGES)}")
    missing = [n for n in names if n not in AVAILABLE_STAGES]
    if missing:
        raise ValueError(f"stage(s) {missing} are not available in this build")
    if "metadata" not in names:
        names.insert(0, "metadata")
    return Plan(
        expected=[n for n in names if STAGES[n].kind in ("inline", "pixel")],
        derived=[n for n in names if STAGES[n].kind == "derived"],
    )


if __name__ == "__main__":  # python -m lensflow.streams.topology --json: the stage graph for the Helm chart

    if sys.argv[1:] != ["--json"]:
        sys.exit("usage: python -m lensflow.streams.topology --json")
    print(json.dumps({"stages": describe_topology("lensflow")["stages"]}, indent=2))
