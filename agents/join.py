"""join: every stage's result per image → one aggregate → Cassandra + Qdrant → images.analyzed + cache.invalidations.

State is a Faust table keyed by ``image_id`` (bytes), co-partitioned with every topic it reads. One
entry per in-flight image, a JSON document (no pickle on a changelog):

    {"first_seen": ms, "deadline": ms, "run_id": str|null, "prepared": b64|null,
     "expected": [stage…], "derived": [stage…], "aggregated": bool,
     "results": {stage: {"run_id": str, "at": ms, "b64": Avro single-object bytes}}}

Completion rule (pure, ``decide``):
* wait until images.prepared is in; then phase 1 waits for every *expected* stage (success or
  failure both count);
* with derived stages (describe), phase 1 emits images.aggregated and phase 2 waits for them;
* at the deadline (``join_timeout_s`` after the first record, renewed when phase 2 starts) the image
  completes as ``partial``, each missing stage reported as failed with code ``timeout``;
* a failed preprocess completes the image as ``failed`` as soon as metadata is in.
Duplicates (same stage, same or older ``produced_at``) and results of another run are ignored, so
redelivery is harmless. A result arriving after its image completed (a *late* result) finds no
prepared record: at its deadline the join loads the stored run from Cassandra, merges the stage in,
and writes it again with ``analysis_version + 1``.

Timeouts: a Faust timer cannot write a table (writes need a source event), so a timer finds entries
past their deadline and sends a ``JoinTick`` keyed by the image id to ``lensflow.join.ticks``; the
join reads it like any other input, on the right partition.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lensflow.streams.records import ms, now, point_id

from .metadata import camera_name
from lensflow.streams.topology import STAGE_OF_RECORD

STAGE = "join"
PREPROCESS = "preprocess"
DESCRIBED_STAGE = "describe"
CACHE_KEYS = ("image:{image_id}", "user:{user_id}:gallery", "user:{user_id}:tags")


def now_ms() -> int:
    return int(time.time() * 1000)


def stage_of(record_name: str) -> str | None:
    short = record_name.rsplit(".", 1)[-1]
    if short == "ImagePrepared":
        return PREPROCESS
    return STAGE_OF_RECORD.get(short)


def new_entry(now: int, timeout_ms: int) -> dict:
    return {"first_seen": now, "deadline": now + timeout_ms, "run_id": None, "prepared": None, "expected": [],
            "derived": [], "aggregated": False, "results": {}}


def merge(entry: dict | None, stage: str, raw: bytes, record: dict, now: int, timeout_ms: int) -> tuple[dict, bool]:
    """Fold one stage record into an entry. Returns (entry, changed); pure apart from copying."""
    entry = json.loads(json.dumps(entry)) if entry is not None else new_entry(now, timeout_ms)
    run_id = record["run_id"]
    at = ms(record["produced_at"])
    b64 = base64.b64encode(raw).decode()
    if stage == PREPROCESS:
        if entry["prepared"] is not None and entry["run_id"] == run_id and at <= entry.get("prepared_at", 0):
            return entry, False  # duplicate
        if entry["prepared"] is not None and entry["run_id"] != run_id and at <= entry.get("prepared_at", 0):
            return entry, False  # an older run arriving after a newer one
        if entry["run_id"] not in (None, run_id):  # a new run of this image starts its own clock
            entry.update(first_seen=now, deadline=now + timeout_ms, aggregated=False)
        entry.update(prepared=b64, prepared_at=at, run_id=run_id, expected=list(record.get("expected_stages") or []),
                     derived=list(record.get("derived_stages") or []), prepared_failed=record["status"] == "failed")
        entry["results"] = {s: r for s, r in entry["results"].items() if r["run_id"] == run_id}
        return entry, True
    if entry["run_id"] is not None and run_id != entry["run_id"]:
        return entry, False  # a result of another run of this image
    old = entry["results"].get(stage)
    if old is not None and old["run_id"] == run_id and at <= old["at"]:
        return entry, False  # duplicate
    entry["results"][stage] = {"run_id": run_id, "at": at, "b64": b64}
    return entry, True


@dataclass
class Decision:
    action: str  # "wait" | "aggregate" | "complete" | "late"
    missing: list[str] = field(default_factory=list)


def decide(entry: dict, now: int) -> Decision:
    """What the join does with an entry now. Pure."""
    expired = now >= entry["deadline"]
    if entry["prepared"] is None:
        return Decision("late") if expired else Decision("wait")
    reported = set(entry["results"])
    phase1_missing = [s for s in entry["expected"] if s not in reported]
    prepared_failed = entry.get("prepared_failed", False)
    if prepared_failed:
        phase1_missing = [s for s in phase1_missing if s == "metadata"]
    if phase1_missing and not expired:
        return Decision("wait", phase1_missing)
    derived = [] if prepared_failed else entry["derived"]
    if derived and not entry["aggregated"]:
        if not expired or not phase1_missing:
            return Decision("aggregate", phase1_missing)
        return Decision("complete", phase1_missing + derived)  # expired in phase 1: no point describing
    derived_missing = [s for s in derived if s not in reported]
    if derived_missing and not expired:
        return Decision("wait", derived_missing)
    return Decision("complete", phase1_missing + derived_missing)


# --------------------------------------------------------------------------------------------
# Assembling the outputs (pure functions of decoded records)
# --------------------------------------------------------------------------------------------

def _summary(stage: str, rec: dict | None, missing_code: str = "timeout") -> dict:
    if rec is None:
        return {"stage": stage, "status": "failed", "duration_ms": 0.0, "model": None,
                "error": {"code": missing_code, "message": f"no {stage} result before the join deadline",
                          "retryable": True, "attempts": 1}}
    return {"stage": stage, "status": rec["status"], "error": rec.get("error"), "duration_ms": rec.get("duration_ms", 0.0),
            "model": rec.get("model")}


def tags_of(results: dict[str, dict]) -> list[dict]:
    """Searchable tags from stage results; one function so every stage's tags are chosen in one place."""
    tags: dict[tuple[str, str], float] = {}

    def add(kind: str, tag: str | None, score: float = 1.0) -> None:
        if tag:
            key = (kind, " ".join(str(tag).lower().split()))
            tags[key] = max(tags.get(key, 0.0), float(score))

    md = results.get("metadata")
    if md and md["status"] == "ok":
        add("camera", camera_name(md.get("camera_make"), md.get("camera_model")))
        if md.get("taken_at"):
            add("year", str(md["taken_at"].year))
    obj = results.get("objects")
    if obj and obj["status"] == "ok":
        for d in obj.get("detections", []):
            add("object", d["label"], d["confidence"])
    sc = results.get("scene")
    if sc and sc["status"] == "ok":
        if sc.get("environment"):
            add("scene", sc["environment"]["label"], sc["environment"]["score"])
        for lab in sc.get("places", []):
            add("place", lab["label"], lab["score"])
        for lab in sc.get("events", []):
            add("event", lab["label"], lab["score"])
    fc = results.get("faces")
    if fc and fc["status"] == "ok":
        for f in fc.get("faces", []):
            add("person", f.get("person_name") or f.get("person_id"), 1.0)
    return [{"kind": k, "tag": t, "score": s} for (k, t), s in sorted(tags.items())]


@dataclass
class Completed:
    image_id: str
    user_id: str
    run_id: str
    version: int
    status: str
    image_row: dict
    analysis_row: dict
    tags: list[dict]
    point: dict
    analyzed: dict
    invalidation: dict
    first_write: bool = False  # no earlier row: the sink can skip reading old tags


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def overall_status(prepared: dict | None, summaries: list[dict]) -> str:
    if prepared is None or prepared["status"] == "failed":
        return "failed"
    return "complete" if all(s["status"] == "ok" for s in summaries) else "partial"


def with_refined_scene(results: dict[str, dict]) -> dict[str, dict]:
    """The scene as the aggregate presents it: the scene stage's labels plus what the objects stage
    found (scene and objects run in parallel, so only the join has both)."""
    scene, objects = results.get("scene"), results.get("objects")
    if not scene or scene.get("status") != "ok" or not objects or objects.get("status") != "ok":
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
    md = results.get("metadata") if results.get("metadata", {}).get("status") == "ok" else None
    md = md or {}
    gps = md.get("gps") or {}
    scene = results.get("scene") or {}
    described = results.get(DESCRIBED_STAGE) or {}
    embedding = results.get("embedding") or {}
    visual = embedding.get("vector") if embedding.get("status") == "ok" and embedding.get("vector") else None
    err = prepared.get("error") if prepared["status"] == "failed" else None
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
        "scene": (scene.get("places") or [{}])[0].get("label") if scene.get("status") == "ok" else None,
        "visual": visual, "status": status, "error_code": err["code"] if err else None,
        "error_message": err["message"] if err else None, "run_id": run_id, "analysis_version": version,
        "uploaded_at": prepared.get("uploaded_at"), "last_analyzed": analyzed_at,
    }
    aggregate = {"image_id": image_id, "user_id": user_id, "run_id": run_id, "status": status, "version": version,
                 "prepared": prepared, "results": results, "stages": summaries, "tags": tags}
    analysis_row = {
        "image_id": image_id, "run_id": run_id, "analysis_version": version, "status": status,
        "stage_status": {s["stage"]: s["status"] for s in summaries},
        "stage_ms": {s["stage"]: float(s["duration_ms"]) for s in summaries},
        "stage_errors": {s["stage"]: f"{s['error']['code']}: {s['error']['message']}" for s in summaries if s.get("error")},
        "stage_models": {s["stage"]: f"{s['model']['name']}@{s['model']['version']}" for s in summaries if s.get("model")},
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
               "geo": {"lat": gps["lat"], "lon": gps["lon"]} if gps else None, "analysis_version": version}
    analyzed = {"image_id": image_id, "user_id": user_id, "run_id": run_id, "analysis_version": version, "status": status,
                "error": err, "stages": summaries, "uri": prepared.get("uri"), "caption": image_row["caption"],
                "tags": tags, "taken_at": md.get("taken_at"), "uploaded_at": prepared["uploaded_at"],
                "analyzed_at": analyzed_at}
    invalidation = {"image_id": image_id, "user_id": user_id, "reason": reason, "analysis_version": version,
                    "keys": [k.format(image_id=image_id, user_id=user_id) for k in CACHE_KEYS], "produced_at": analyzed_at}
    return Completed(image_id, user_id, run_id, version, status, image_row, analysis_row, tags,
                     {"id": point_id(image_id), "vectors": vectors, "payload": payload}, analyzed, invalidation)


def aggregated_record(prepared: dict, results: dict[str, dict], stages: list[str]) -> dict:
    """The phase-1 aggregate for derived stages (ImageAggregated)."""
    results = with_refined_scene(results)
    summaries = [_summary(PREPROCESS, prepared)] + [_summary(s, results.get(s)) for s in stages]
    rec = {"image_id": prepared["image_id"], "user_id": prepared["user_id"], "run_id": prepared["run_id"],
           "status": overall_status(prepared, summaries), "prepared": prepared, "stages": summaries, "aggregated_at": now()}
    for field_name in ("metadata", "objects", "scene", "text", "faces", "embedding"):
        rec[field_name] = results.get(field_name)
    return rec


# --------------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------------

def register(ctx, stages: list[str] | None = None) -> None:
    import asyncio

    from lensflow.streams.app import use_event
    from lensflow.streams.errors import classify, fatal, sink_retrying
    from lensflow.streams.sinks import CassandraSink, QdrantSink
    from lensflow.streams.topology import AGGREGATED, ANALYZED, INVALIDATIONS, JOIN_TICKS, STAGES

    settings, app, codec = ctx.settings, ctx.app, ctx.codec
    timeout_ms = int(settings.join_timeout_s * 1000)
    # key_type=bytes selects the raw key serializer (keys are the image id bytes of the source records);
    # values are JSON documents (faust derives both serializers from the types, not from a Schema)
    table = app.Table("join-state", default=None, key_type=bytes,
                      partitions=settings.partitions, use_partitioner=True,
                      help="in-flight images of the join, keyed by image_id")
    inputs = ctx.topic(*STAGES[STAGE].reads)
    ctx.stores.want("cassandra", "qdrant")
    ticked: dict[bytes, int] = {}
    metrics = ctx.metrics
    log = ctx.log.bind(stage=STAGE)

    def sinks() -> tuple[CassandraSink, QdrantSink]:
        return ctx.stores.cassandra, ctx.stores.qdrant

    def decoded(b64: str) -> tuple[str, dict, bytes]:
        raw = base64.b64decode(b64)
        name, rec = codec.decode(raw)
        return name, rec, raw

    async def complete(key: bytes, entry: dict, decision: Decision) -> Completed | None:
        cassandra, _ = sinks()
        _, prepared, prepared_raw = decoded(entry["prepared"])
        results, raw = {}, {PREPROCESS: prepared_raw}
        for stage, r in entry["results"].items():
            _, rec, b = decoded(r["b64"])
            results[stage], raw[stage] = rec, b
        stored = await cassandra.current(prepared["image_id"])
        if prepared.get("mode") == "merge":
            return await merge_into_stored(prepared, results, raw, stored)
        if stored is None:
            version = 1  # first write of this image: it has no old tags to replace
        elif stored[0] == prepared["run_id"]:
            version = stored[1]  # a replay of a run already written: same version, idempotent
        else:
            version = stored[1] + 1
        stages = list(dict.fromkeys(entry["expected"] + entry["derived"]))
        if decision.missing:
            log.warning("image_partial", image_id=prepared["image_id"], missing=decision.missing)
        done = assemble(prepared, results, raw, stages, version)
        done.first_write = stored is None
        return done

    async def merge_into_stored(prepared: dict, results: dict, raw: dict, stored) -> Completed | None:
        """A re-analysis of some stages: their new results replace the stored ones, every other
        stage's result is kept as stored; the run gets its own analysis_results row."""
        image_id = prepared["image_id"]
        if stored is None:
            log.error("reanalysis_of_unknown_image", image_id=image_id)
            return None
        stored_run, version, _ = stored
        merged = await cassandra_records(image_id, stored_run)
        if PREPROCESS not in merged:
            log.error("reanalysis_without_stored_run", image_id=image_id, run_id=stored_run)
            return None
        merged.update({stage: raw[stage] for stage in results})
        recs = {stage: codec.decode(b)[1] for stage, b in merged.items()}
        base = {**recs.pop(PREPROCESS), "run_id": prepared["run_id"]}
        stages = list(dict.fromkeys(list(base.get("expected_stages") or []) + list(base.get("derived_stages") or []) + list(recs)))
        new_version = version if stored_run == prepared["run_id"] else version + 1  # a replay keeps its version
        log.info("reanalysis_merged", image_id=image_id, stages=sorted(results), version=new_version)
        return assemble(base, recs, merged, stages, new_version, reason="reanalyzed")

    async def cassandra_records(image_id: str, run_id: str) -> dict[str, bytes]:
        return await sinks()[0].stage_records(image_id, run_id)

    async def late(key: bytes, entry: dict) -> Completed | None:
        """Results whose image already completed: merge them into the stored run."""
        cassandra, _ = sinks()
        image_id = key.decode()
        stored = await cassandra.current(image_id)
        if stored is None:
            log.error("orphan_results", image_id=image_id, stages=sorted(entry["results"]),
                      reason="no images.prepared and no stored image")
            return None
        run_id, version, _ = stored
        raw = await cassandra.stage_records(image_id, run_id)
        changed = False
        for stage, r in entry["results"].items():
            if r["run_id"] != run_id:
                log.info("stale_result_dropped", image_id=image_id, stage=stage, run_id=r["run_id"])
                continue
            b = base64.b64decode(r["b64"])
            if raw.get(stage) != b:
                raw[stage], changed = b, True
        if not changed or PREPROCESS not in raw:
            return None
        recs = {stage: codec.decode(b)[1] for stage, b in raw.items()}
        prepared = recs.pop(PREPROCESS)
        stages = list(dict.fromkeys(list(prepared.get("expected_stages") or []) + list(prepared.get("derived_stages") or []) + list(recs)))
        log.info("late_results_merged", image_id=image_id, stages=sorted(entry["results"]), version=version + 1)
        return assemble(prepared, recs, raw, stages, version + 1, reason="reanalyzed")

    async def write(done: list[Completed]) -> None:
        cassandra, qdrant = sinks()
        t0 = time.perf_counter()
        async for attempt in sink_retrying(settings.sink_retry_deadline_s):
            with attempt:
                await asyncio.gather(*(cassandra.write(c.image_row, c.analysis_row, c.tags, c.first_write) for c in done))
        t1 = time.perf_counter()
        async for attempt in sink_retrying(settings.sink_retry_deadline_s):
            with attempt:
                await qdrant.upsert_images([c.point for c in done])
        metrics.sink_seconds.labels("cassandra").observe(t1 - t0)
        metrics.sink_seconds.labels("qdrant").observe(time.perf_counter() - t1)

    async def handle(stream, events) -> None:
        """Fold a batch into the table. Entries are kept batch-local and written back once per key at
        the end: an image that completes within the batch never touches the changelog at all."""
        now = now_ms()
        work: dict[bytes, dict | None] = {}  # the entry of each key as of this batch
        existed: dict[bytes, bool] = {}  # key had a table entry from an earlier batch
        last: dict[bytes, Any] = {}  # the last event of each key (its partition owns the entry)
        for event in events:
            use_event(event)  # table reads and writes go to this event's partition store
            key = event.message.key
            try:
                name, rec = codec.decode(event.message.value)
                if key is None or key.decode() != rec["image_id"]:
                    raise ValueError(f"record key {key!r} does not match image_id {rec['image_id']!r}")
                if key not in work:
                    work[key] = table.get(key)
                    existed[key] = work[key] is not None
                if name.endswith(".JoinTick"):
                    if work[key] is None:
                        continue
                else:
                    stage = stage_of(name)
                    if stage is None:
                        raise ValueError(f"the join does not read {name}")
                    entry, changed = merge(work[key], stage, event.message.value, rec, now, timeout_ms)
                    if not changed:
                        metrics.images_total.labels(STAGE, "duplicate").inc()
                        continue
                    work[key] = entry
                last[key] = event
            except Exception as exc:
                await ctx.dead_letter(STAGE, event, classify(exc))
        done: list[Completed] = []
        finished_keys: set[bytes] = set()
        for key, event in last.items():
            entry = work[key]
            decision = decide(entry, now)
            try:
                if decision.action == "aggregate":
                    _, prepared, _ = decoded(entry["prepared"])
                    results = {s: decoded(r["b64"])[1] for s, r in entry["results"].items()}
                    await ctx.send(AGGREGATED, key.decode(), "ImageAggregated",
                                   aggregated_record(prepared, results, entry["expected"]))
                    entry["aggregated"], entry["deadline"] = True, now + timeout_ms
                elif decision.action in ("complete", "late"):
                    c = await (complete(key, entry, decision) if decision.action == "complete" else late(key, entry))
                    if c is not None:
                        done.append(c)
                    finished_keys.add(key)
            except Exception as exc:
                await ctx.dead_letter(STAGE, event, classify(exc), image_id=key.decode())
                finished_keys.add(key)
        if done:
            try:
                await write(done)
            except Exception as exc:
                fatal("stores did not accept writes within LENSFLOW_SINK_RETRY_DEADLINE_S", exc)
            for c in done:
                await ctx.send(ANALYZED, c.image_id, "ImageAnalyzed", c.analyzed)
                await ctx.send(INVALIDATIONS, c.image_id, "CacheInvalidation", c.invalidation)
                metrics.images_total.labels(STAGE, c.status).inc()
                metrics.end_to_end.labels(c.status).observe(max(0.0, (c.analyzed["analyzed_at"] - c.analyzed["uploaded_at"]).total_seconds()))
                log.info("image_analyzed", image_id=c.image_id, status=c.status, version=c.version)
        for key, event in last.items():
            use_event(event)
            if key in finished_keys:
                if existed[key]:
                    del table[key]
                ticked.pop(key, None)
            else:
                table[key] = work[key]

    @app.agent(inputs, name=STAGE)
    async def join(stream):
        await ctx.stores.ready.wait()
        async for events in stream.take_events(max(settings.batch_size * 4, 32), within=settings.batch_within_s):
            try:
                with metrics.batch(STAGE, len(events)):
                    await handle(stream, events)
            except Exception as exc:  # a bug at batch level: exit rather than ack what was not written
                fatal("join batch failed", exc)

    @app.timer(settings.join_tick_interval_s)
    async def deadlines() -> None:
        now = now_ms()
        count = 0
        for key, entry in list(table.items()):
            if entry is None:
                continue
            count += 1
            if entry["deadline"] <= now and ticked.get(key, 0) < now - timeout_ms // 4:
                ticked[key] = now
                await ctx.send(JOIN_TICKS, key.decode(), "JoinTick", {"image_id": key.decode(), "reason": "timeout",
                                                                        "produced_at": datetime.now().astimezone()})
        metrics.inflight.set(count)
