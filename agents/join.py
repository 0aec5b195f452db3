"""join: every stage's result per image → one aggregate → Cassandra + Qdrant → images.analyzed + cache.invalidations.

Three parts, each testable on its own:

* ``join_state``: the pure state of one in-flight image (``merge`` a record in, ``decide`` what to do,
  the progress-aware deadline);
* ``join_projection``: the pure projection of an image's records into rows, tags, a Qdrant point and
  the events (``assemble``);
* ``lensflow.streams.store``: every CQL statement and Qdrant call.

This module is the thin agent between them, on the stage runner. State is a Faust table keyed by
``image_id`` (bytes), co-partitioned with every topic it reads; entries are kept batch-local and
written back once per key after the batch's outputs are delivered.

Delivery: a batch's store writes happen inside ``process``; its events (images.aggregated,
images.analyzed, cache.invalidations, dead letters) are produced and acknowledged by the broker
before ``delivered`` records the notification in Cassandra (``images.notified_run``) and deletes the
finished images' table state. So a crash anywhere leaves the inputs un-acked and the state in place:
the batch is redelivered and the stores are rewritten idempotently (same run, same version). Each
(image, run) gets at most one ``images.analyzed`` event, except when a crash falls between an
event's delivery and its ``notified_run`` write: the consumer then sees it twice, with the same
``(image_id, run_id, analysis_version)``: that triple is the deduplication key. A late result merged
into a stored run updates the stores and emits a cache invalidation, not a second ``ImageAnalyzed``.

Ownership: an image id belongs to the user who first stored it. A run of another user with the same id
is refused with ``id_conflict`` (its submitter gets a failed ``ImageAnalyzed``; nothing is written).

Timeouts: a Faust timer cannot write a table (writes need a source event), so a timer finds entries
the join should act on and sends a ``JoinTick`` keyed by the image id to ``lensflow.join.ticks``; the
join reads it like any other input, on the right partition.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from lensflow.streams.avro_types import ImageAnalyzed, JoinTick, StageError
from lensflow.streams.errors import ErrorCode, StageFailure, Verdict, classify, is_transient
from lensflow.streams.records import ImageStatus, ms
from lensflow.streams.runner import Item, Outcome, Output, Stage, run, use_event
from lensflow.streams.topology import (AGGREGATED, ANALYZED, INVALIDATIONS, JOIN_TICKS, PREPARED, RESULT_TOPIC,
                                       STAGES)

from .join_projection import Completed, aggregated_record, assemble, failed_copy, mark_duplicates
from .join_state import (PREPROCESS, Decision, Entry, JoinAction, Progress, after_completion, aggregated, all_results, decide, merge,
                         place, run_order, stage_of)

STAGE = "join"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Finish:
    """How one image leaves the join: what to store (``write``), whether to announce it on
    images.analyzed (``notify``), and why it failed for good when it did (``dead_letter``)."""

    key: bytes
    completed: Completed | None
    write: bool = True
    notify: bool = True
    dead_letter: Verdict | None = None
    also: list[ImageAnalyzed] = field(default_factory=list)  # of superseded runs, answered with this one


class Join(Stage):
    name = STAGE
    reads = STAGES[STAGE].reads

    def __init__(self, ctx):
        super().__init__(ctx)
        s = self.settings
        self.timeout_ms = int(s.join_timeout_s * 1000)
        #: results with no images.prepared wait this long for it before they count as orphans
        self.orphan_after_ms = max(10 * self.timeout_ms, 600_000)
        # key_type=bytes selects the raw key serializer (keys are the image id bytes of the source records);
        # values are JSON documents (faust derives both serializers from the types, not from a Schema)
        self.table = ctx.app.Table("join-state", default=None, key_type=bytes, partitions=s.partitions,
                                   use_partitioner=True, help="in-flight images of the join, keyed by image_id")
        ctx.stores.want("cassandra", "qdrant")
        self.progress = Progress(started=now_ms(), timeout_ms=self.timeout_ms)
        self.ticked: dict[bytes, int] = {}
        self.metrics = ctx.metrics
        self.pending: dict[str, Any] = {}
        self._stored_now: dict[str, Any] = {}  # image_id -> StoredImage, read at the start of the batch
        self._prefetched: set[str] = set()
        # True until a batch succeeds: at start-up (the stages are loading models, the group is forming),
        # after a failed attempt (a store down) and after a rebalance, silence counts from the next batch
        self.stalled = True

        async def assigned(app, assigned, **kwargs) -> None:
            self.stalled = True

        ctx.app.on_partitions_assigned.connect(assigned)  # held strongly (weak=False is the default)

        @ctx.app.timer(s.join_tick_interval_s)
        async def deadlines() -> None:
            await self.tick()

    @property
    def batch_size(self) -> int:
        return max(self.settings.batch_size * 4, 32)

    async def start(self) -> None:
        """Wait until the producer knows the table's changelog partitions. Faust picks a table key's
        changelog partition (``use_partitioner``) through aiokafka's ``AIOKafkaProducer._partition``,
        which reads the producer's metadata without waiting for it (``list(partitions_for_topic(...))``):
        right after the worker created the changelog topic, the join's first table write raised
        ``TypeError: 'NoneType' object is not iterable`` and the worker exited (once in ~20 chaos runs
        on a fresh namespace). ``partitions_for`` is aiokafka's public call that waits for them."""
        topic = self.table.changelog_topic.get_topic_name()
        try:
            await self.ctx.app.producer._ensure_producer().partitions_for(topic)
        except Exception as exc:  # the first table write may then still fail: the worker exits un-acked
            self.log.warning("changelog_metadata_unavailable", topic=topic, error=f"{type(exc).__name__}: {exc}")

    @property
    def store(self):
        return self.ctx.stores

    def decoded(self, b64: str) -> tuple[str, dict, bytes]:
        raw = base64.b64decode(b64)
        name, rec = self.ctx.codec.decode(raw)
        return name, rec, raw

    def inputs(self, key: bytes, entry: Entry | None) -> list[tuple[str, bytes, bytes]]:
        """Every record the join holds for an image, as (topic, key, value): what a dead letter carries so
        that a replay can rebuild the image."""
        if not entry:
            return []
        topic = self.settings.topic
        out = [(topic(PREPARED), key, base64.b64decode(entry["prepared"]))] if entry.get("prepared") else []
        return out + [(topic(RESULT_TOPIC[stage]), key, base64.b64decode(r["b64"])) for stage, r in entry["results"].items()]

    # --- one batch ------------------------------------------------------------------------------
    async def process(self, items: list[Item]) -> list[Outcome]:
        now = now_ms()
        if self.stalled:  # the join was not consuming until now: silence counts from here
            self.progress.resume(now)
        self.stalled = True  # until this attempt succeeds
        outcomes = [Outcome() for _ in items]
        work: dict[bytes, Entry | None] = {}  # the entry of each key as of this batch
        existed: dict[bytes, bool] = {}  # key had a table entry from an earlier batch
        last: dict[bytes, int] = {}  # index of the last item of each key (its partition owns the entry)
        for i, item in enumerate(items):
            use_event(item.event)  # table reads and writes go to this event's partition store
            key = item.event.message.key
            if key not in work:
                work[key] = self.table.get(key)
                existed[key] = work[key] is not None
            if item.record_name == "JoinTick":
                if work[key] is None:
                    continue
            else:
                stage = stage_of(item.record_name)
                if stage is None:
                    outcomes[i] = Outcome(dead_letter=classify(StageFailure(
                        ErrorCode.POISON, f"the join does not read {item.record_name}")))
                    continue
                partition = item.event.message.partition
                entry, changed = merge(work[key], stage, item.event.message.value, item.record, now, self.timeout_ms,
                                       partition, item.event.message.offset)
                if not changed:
                    self.metrics.images_total.labels(STAGE, "duplicate").inc()
                    continue
                self.progress.saw(stage, partition, place(entry, stage) if entry.get("prepared") else None, now)
                work[key] = entry
            last[key] = i

        # the stored rows this batch will ask about, in one request per 100 images instead of one read
        # each, one after another (4.5 ms of the join's ~11 ms wall per image at 2 MP; bench/RESULTS.md)
        decisions = {key: decide(work[key], now, self.progress) for key in last}
        asked = [key.decode() for key in last if self.may_be_notified(work[key], now)
                 or decisions[key].action in (JoinAction.COMPLETE, JoinAction.UNPREPARED)]
        self._stored_now = await self.store.cassandra.current_many(asked) if asked else {}
        self._prefetched = set(asked)
        finishes: list[Finish] = []
        outputs: dict[bytes, list[Output]] = {}
        for key, i in last.items():
            entry = work[key]
            decision = decisions[key]
            try:
                if self.may_be_notified(entry, now) and await self.already_notified(entry):
                    # the run was stored and announced. A result it lacks (one that came after its
                    # deadline while the announced entry was still held) is merged in like any late
                    # result; otherwise these are inputs redelivered after a crash, whose rest were
                    # committed and will not come again
                    late = await self.late_into_announced(key, entry)
                    if late is None:
                        self.log.info("run_already_stored", image_id=key.decode(), run_id=entry["run_id"])
                    finishes.append(late or Finish(key, None, write=False, notify=False))
                    continue
                if decision.action == JoinAction.AGGREGATE:
                    _, prepared, _ = self.decoded(entry["prepared"])
                    results = {s: self.decoded(r["b64"])[1] for s, r in entry["results"].items()}
                    if decision.missing:
                        self.log.warning("phase1_expired", image_id=key.decode(), missing=decision.missing)
                    outputs.setdefault(key, []).append(Output(AGGREGATED, key.decode(), "ImageAggregated",
                                                              aggregated_record(prepared, results, entry["expected"])))
                    work[key] = aggregated(entry, now, self.timeout_ms)
                elif decision.action == JoinAction.COMPLETE:
                    finish = await self.complete(key, entry, decision)
                    finish.also = self.superseded(entry, finish.completed)
                    finishes.append(finish)
                elif decision.action == JoinAction.UNPREPARED:
                    finish = await self.unprepared(key, entry, now)
                    if finish is None:
                        work[key] = {**entry, "deadline": now + self.timeout_ms}
                    else:
                        finishes.append(finish)
            except Exception as exc:
                if is_transient(exc):
                    raise  # a store is down: the runner retries the batch (nothing was acked or deleted)
                verdict = classify(exc)
                self.log.error("join_failed", image_id=key.decode(), code=verdict.code, reason=verdict.message)
                finishes.append(Finish(key, None, write=False, notify=False, dead_letter=verdict))
        await self.write([f for f in finishes if f.write and f.completed is not None])
        for f in finishes:
            c = f.completed
            if c is not None and f.notify:
                outputs.setdefault(f.key, []).append(Output(ANALYZED, c.image_id, "ImageAnalyzed", c.analyzed))
            for analyzed in f.also:
                outputs.setdefault(f.key, []).append(Output(ANALYZED, analyzed.image_id, "ImageAnalyzed", analyzed))
            if c is not None and f.write:
                outputs.setdefault(f.key, []).append(Output(INVALIDATIONS, c.image_id, "CacheInvalidation", c.invalidation))
            if f.dead_letter is not None:
                outcomes[last[f.key]].dead_letter = f.dead_letter
                outcomes[last[f.key]].inputs = self.inputs(f.key, work[f.key])
        for key, outs in outputs.items():
            outcomes[last[key]].outputs = outs
        self.pending = {"work": work, "existed": existed, "last": last, "finishes": finishes}
        self.stalled = False
        return outcomes

    @staticmethod
    def may_be_notified(entry: Entry, now: int) -> bool:
        """Whether the entry's run may have been stored and announced before a crash (inputs redelivered
        past its deadline), and was not asked about at this deadline yet (``already_notified``)."""
        return (bool(entry.get("prepared")) and now >= entry["deadline"] and not entry.get("superseded")
                and entry.get("checked_deadline") != entry["deadline"])

    async def stored(self, image_id: str):
        """The image's stored row as this batch found it (read for the whole batch at its start), or read
        now for an image the batch did not expect to ask about."""
        if image_id in self._prefetched:
            return self._stored_now.get(image_id)
        return await self.store.cassandra.current(image_id)

    async def complete(self, key: bytes, entry: Entry, decision: Decision) -> Finish:
        _, prepared, prepared_raw = self.decoded(entry["prepared"])
        results, raw = {}, {PREPROCESS: prepared_raw}
        for stage, r in entry["results"].items():
            _, rec, b = self.decoded(r["b64"])
            results[stage], raw[stage] = rec, b
        image_id, run_id = prepared["image_id"], prepared["run_id"]
        stored = await self.stored(image_id)
        stages = list(dict.fromkeys(entry["expected"] + entry["derived"]))
        if stored is not None and stored.user_id != prepared["user_id"]:
            message = f"image id {image_id} belongs to another user: choose another id"
            done = failed_copy(assemble(prepared, results, raw, stages, 1), ErrorCode.ID_CONFLICT, message)
            return Finish(key, done, write=False, dead_letter=classify(StageFailure(ErrorCode.ID_CONFLICT, message)))
        if prepared.get("mode") == "merge":
            done = await self.merge_into_stored(prepared, results, raw, stored)
            return Finish(key, done, write=done is not None, notify=done is not None)
        if stored is not None and stored.run_id != run_id and stored.uploaded_at is not None and (
                (ms(stored.uploaded_at), stored.run_id) > run_order(prepared)):
            # an older upload of this image arriving after a newer one was stored: answer it, keep the newer
            self.log.info("older_run_not_stored", image_id=image_id, run_id=run_id, stored_run=stored.run_id)
            return Finish(key, assemble(prepared, results, raw, stages, stored.version), write=False)
        if stored is not None and stored.run_id == run_id and stored.notified_run == run_id:
            self.log.info("run_already_stored", image_id=image_id, run_id=run_id)  # a redelivery after the event
            return Finish(key, None, write=False, notify=False)
        if stored is None:
            version = 1  # first write of this image: it has no old tags to replace
        elif stored.run_id == run_id:
            version = stored.version  # a replay of a run already written: same version, idempotent
        else:
            version = stored.version + 1
        if decision.missing and stored is not None and stored.run_id == run_id:
            # this run was stored before a crash and its inputs only partly redelivered (each topic's
            # offsets are committed on their own): what the stored run has, it keeps
            kept = await self.store.cassandra.stage_records(image_id, run_id)
            for stage in decision.missing:
                if stage in kept:
                    raw[stage] = kept[stage]
                    results[stage] = self.ctx.codec.decode(kept[stage])[1]
            decision = Decision(decision.action, [s for s in decision.missing if s not in kept])
        if decision.missing:
            self.log.warning("image_partial", image_id=image_id, missing=decision.missing)
        done = assemble(prepared, results, raw, stages, version)
        done.first_write = stored is None
        return Finish(key, done)

    def superseded(self, entry: Entry, done: Completed | None) -> list[ImageAnalyzed]:
        """An ImageAnalyzed for each run of the image that the analysed run superseded: the same
        result under its own run id (a run of another user gets ``id_conflict``)."""
        if done is None or not entry.get("superseded"):
            return []
        out = []
        for s in entry["superseded"]:
            _, prepared, _ = self.decoded(s["b64"])
            analyzed = replace(done.analyzed, run_id=s["run_id"], user_id=prepared["user_id"],
                               uploaded_at=prepared["uploaded_at"])
            if prepared["user_id"] != done.user_id:
                message = f"image id {done.image_id} belongs to another user: choose another id"
                analyzed = replace(analyzed, status=ImageStatus.FAILED, caption=None, tags=[],
                                   error=StageError(code=str(ErrorCode.ID_CONFLICT), message=message, retryable=False, attempts=1))
            out.append(analyzed)
        self.log.info("runs_superseded", image_id=done.image_id, run_id=done.run_id, superseded=[s["run_id"] for s in entry["superseded"]])
        return out

    async def already_notified(self, entry: Entry) -> bool:
        """Whether the entry's run is stored and its images.analyzed delivered (asked once per timeout:
        only when ``may_be_notified``)."""
        entry["checked_deadline"] = entry["deadline"]
        _, prepared, _ = self.decoded(entry["prepared"])
        stored = await self.stored(prepared["image_id"])
        return stored is not None and stored.run_id == entry["run_id"] == stored.notified_run

    async def merge_into_stored(self, prepared: dict, results: dict, raw: dict, stored) -> Completed | None:
        """A re-analysis of some stages: their new results replace the stored ones, every other
        stage's result is kept as stored; the run gets its own analysis_results row."""
        image_id = prepared["image_id"]
        if stored is None:
            self.log.error("reanalysis_of_unknown_image", image_id=image_id)
            return None
        merged = await self.store.cassandra.stage_records(image_id, stored.run_id)
        if PREPROCESS not in merged:
            self.log.error("reanalysis_without_stored_run", image_id=image_id, run_id=stored.run_id)
            return None
        merged.update({stage: raw[stage] for stage in results})
        new_version = stored.version if stored.run_id == prepared["run_id"] else stored.version + 1  # a replay keeps its version
        self.log.info("reanalysis_merged", image_id=image_id, stages=sorted(results), version=new_version)
        return self.reassemble(merged, new_version, run_id=prepared["run_id"])

    def reassemble(self, raw: dict[str, bytes], version: int, run_id: str | None = None) -> Completed:
        """A stored run's records, some replaced (a re-analysis, late results), assembled again; under
        ``run_id`` when given (a re-analysis is a run of its own)."""
        recs = {stage: self.ctx.codec.decode(b)[1] for stage, b in raw.items()}
        prepared = recs.pop(PREPROCESS)
        if run_id is not None:
            prepared = {**prepared, "run_id": run_id}
        stages = list(dict.fromkeys(list(prepared.get("expected_stages") or []) + list(prepared.get("derived_stages") or [])
                                    + list(recs)))
        return assemble(prepared, recs, raw, stages, version, reason="reanalyzed")

    async def unprepared(self, key: bytes, entry: Entry, now: int) -> Finish | None:
        """Results past their deadline with no images.prepared: *late* results of a stored run are merged
        into it (stores and an invalidation, no second ImageAnalyzed); *early* ones (images.prepared
        still queued) wait, None; after ``orphan_after_ms`` they are orphans, dropped and counted."""
        image_id = key.decode()
        stored = await self.stored(image_id)
        held = all_results(entry)
        runs = {r["run_id"] for _, r in held}
        if stored is None or stored.run_id not in runs:
            if now - entry["first_seen"] < self.orphan_after_ms:
                return None
            self.metrics.join_orphans.inc()
            self.log.error("orphan_results", image_id=image_id, stages=sorted({s for s, _ in held}),
                           reason="no images.prepared and no stored run")
            return Finish(key, None, write=False, notify=False)
        raw, changed = await self.with_held(image_id, stored.run_id, held)
        if PREPROCESS not in raw:
            return Finish(key, None, write=False, notify=False)
        if not changed:
            # the stored run has these results already: stored before a crash that came before their
            # cache invalidation was delivered (or a duplicate result). Rewritten at the same version
            # (idempotent) so that the invalidation goes out again: at least once, never lost
            self.log.info("late_results_already_stored", image_id=image_id, version=stored.version)
            return Finish(key, self.reassemble(raw, stored.version), notify=False)
        self.log.info("late_results_merged", image_id=image_id, stages=sorted({s for s, r in held if r["run_id"] == stored.run_id}),
                      version=stored.version + 1)
        return Finish(key, self.reassemble(raw, stored.version + 1), notify=False)

    async def with_held(self, image_id: str, run_id: str, held, only_missing: bool = False) -> tuple[dict[str, bytes], bool]:
        """The stored run's records with the held results of that run put in, and whether any was new
        or different (``only_missing``: only results of stages the stored run has none of)."""
        raw = await self.store.cassandra.stage_records(image_id, run_id)
        changed = False
        for stage, r in held:
            if r["run_id"] != run_id or (only_missing and stage in raw):
                continue
            b = base64.b64decode(r["b64"])
            if raw.get(stage) != b:
                raw[stage], changed = b, True
        return raw, changed

    async def late_into_announced(self, key: bytes, entry: Entry) -> Finish | None:
        """A stored and announced run whose entry holds a result the stored run lacks (it came after the
        run's deadline, before the entry was let go): merged into the stored run at ``version + 1``
        (stores and an invalidation, no second ImageAnalyzed), as ``unprepared`` does with late results
        that find no entry. None when the stored run has a result of every held stage (a stage run again
        after a crash gives other bytes, a duration for one: that is a redelivery, not news)."""
        image_id = key.decode()
        stored = await self.stored(image_id)
        raw, changed = await self.with_held(image_id, stored.run_id, all_results(entry), only_missing=True)
        if not changed or PREPROCESS not in raw:
            return None
        self.log.info("late_results_merged", image_id=image_id, run_id=stored.run_id, version=stored.version + 1,
                      stages=sorted(s for s, r in all_results(entry) if r["run_id"] == stored.run_id))
        return Finish(key, self.reassemble(raw, stored.version + 1), notify=False)

    async def write(self, finishes: list[Finish]) -> None:
        """Store every finished image. A transient fault raises (the runner retries the batch: every write
        is idempotent); a store's refusal fails that image alone: its row is stored as ``failed`` with
        ``store_rejected`` (without the refused vectors) and its records are dead-lettered."""
        if not finishes:
            return
        cassandra, qdrant = self.store.cassandra, self.store.qdrant
        await asyncio.gather(*(self.find_duplicates(f.completed) for f in finishes))
        t0 = time.perf_counter()
        results = await asyncio.gather(*(cassandra.write(f.completed.image_row, f.completed.analysis_row,
                                                         f.completed.tags, f.completed.first_write) for f in finishes),
                                       return_exceptions=True)
        self.raise_transient(results)
        t1 = time.perf_counter()
        ok = [f for f, r in zip(finishes, results) if not isinstance(r, BaseException)]
        points = [f for f in ok if f.completed.point is not None]
        if points:
            try:
                await qdrant.upsert_images([f.completed.point for f in points])
            except Exception as exc:
                if is_transient(exc):
                    raise
                # find the refused point(s): one upsert each
                each = await asyncio.gather(*(qdrant.upsert_images([f.completed.point]) for f in points), return_exceptions=True)
                self.raise_transient(each)
                results = list(results)
                for f, r in zip(points, each):
                    if isinstance(r, BaseException):
                        results[finishes.index(f)] = r
        rejected = [(f, r) for f, r in zip(finishes, results) if isinstance(r, BaseException)]
        for f, exc in rejected:
            verdict = classify(exc)
            self.log.error("store_rejected", image_id=f.completed.image_id, reason=verdict.message)
            f.completed = failed_copy(f.completed, ErrorCode.STORE_REJECTED, verdict.message)
            f.dead_letter = Verdict(ErrorCode.STORE_REJECTED, verdict.message, False, True)
        if rejected:
            again = await asyncio.gather(*(cassandra.write(f.completed.image_row, f.completed.analysis_row, [])
                                           for f, _ in rejected), return_exceptions=True)
            self.raise_transient(again)
            for (f, _), r in zip(rejected, again):
                if isinstance(r, BaseException):  # not even the failed row: the dead letter is all there is
                    f.write = False
        self.metrics.sink_seconds.labels("cassandra").observe(t1 - t0)
        self.metrics.sink_seconds.labels("qdrant").observe(time.perf_counter() - t1)

    async def find_duplicates(self, c: Completed) -> None:
        """Flag ``c`` when the user already has its original's bytes (exact) or a visually near-identical
        image (``LENSFLOW_NEAR_DUPLICATE_THRESHOLD``, cosine of the visual vectors). A store outage
        raises (the batch is retried); any other failure leaves the image unflagged and is logged."""
        if c.status == ImageStatus.FAILED:
            return
        try:
            sha, visual = c.image_row.get("sha256"), c.image_row.get("visual")
            exact = await self.store.cassandra.same_bytes(c.user_id, sha) if sha else []
            near = (await self.store.qdrant.near_duplicates(c.user_id, visual, self.settings.near_duplicate_threshold,
                                                            c.image_id) if visual else [])
        except Exception as exc:
            if is_transient(exc):
                raise
            self.log.warning("duplicates_not_checked", image_id=c.image_id, reason=str(exc)[:200])
            return
        mark_duplicates(c, exact, near)

    def raise_transient(self, results: list) -> None:
        for r in results:
            if isinstance(r, BaseException) and is_transient(r):
                raise r

    async def delivered(self, items: list[Item], outcomes: list[Outcome]) -> None:
        """Every event of the batch is on the broker: record the notifications, then update the table.

        Safe to retry: the runner retries this step when it raises (a notified-run UPDATE timing out), so
        the batch's state is let go only once the notifications are written. It used to be emptied before
        them, and the retry then found nothing to do: the batch was acked with its results never written
        to the table (images ended ``partial`` for stages that had succeeded) and its finished images kept
        in the table, announced a second time later."""
        p = self.pending
        if not p:
            return
        notified = [f.completed for f in p["finishes"] if f.notify and f.completed is not None and f.write]
        if notified:
            results = await asyncio.gather(*(self.store.cassandra.mark_notified(c.image_id, c.run_id) for c in notified),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]  # every UPDATE has finished; a retry writes them all again (idempotent)
        self.pending = {}
        finished = {f.key for f in p["finishes"]}
        for c in (f.completed for f in p["finishes"] if f.completed is not None and f.write):
            self.metrics.images_total.labels(STAGE, c.status).inc()
            self.metrics.end_to_end.labels(c.status).observe(
                max(0.0, (c.analyzed.analyzed_at - c.analyzed.uploaded_at).total_seconds()))
            self.log.info("image_analyzed", image_id=c.image_id, status=c.status, version=c.version)
        for key, i in p["last"].items():
            use_event(items[i].event)
            if key in finished:
                rest = after_completion(p["work"][key], now_ms(), self.timeout_ms) if p["work"][key] else None
                if rest is not None:
                    self.table[key] = rest  # results of a run of the image still to be prepared
                elif p["existed"][key]:
                    del self.table[key]
                self.ticked.pop(key, None)
            else:
                self.table[key] = p["work"][key]

    # --- deadlines ------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Nudge (through lensflow.join.ticks) every entry the join should act on now."""
        now = now_ms()
        count = 0
        for key, entry in list(self.table.items()):
            if entry is None:
                continue
            count += 1
            if decide(entry, now, self.progress).action != JoinAction.WAIT and self.ticked.get(key, 0) < now - self.timeout_ms // 4:
                try:
                    await self.ctx.send(JOIN_TICKS, key.decode(), "JoinTick", JoinTick(image_id=key.decode(), reason="timeout",
                                                                                        produced_at=datetime.now().astimezone()))
                except Exception as exc:
                    # the broker or the schema registry is down: a timer that raises crashes the whole app
                    # (mode's Service task), so this tick ends here and the next one tries again
                    if not is_transient(exc):
                        raise
                    self.log.warning("tick_not_sent", error=f"{type(exc).__name__}: {exc}"[:300])
                    break
                self.ticked[key] = now
        self.metrics.inflight.set(count)


def register(ctx, stages: list[str] | None = None) -> None:
    run(ctx, Join(ctx))
