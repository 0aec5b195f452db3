"""The join's state, pure: what one in-flight image's entry holds (``Entry``), how a stage record is
folded into it (``merge``) and what the join does with it now (``decide``). No Kafka, no stores.

One entry per in-flight image, a JSON document in the join's Faust table (no pickle on a changelog)::

    {"first_seen": ms, "deadline": ms, "offset": int|null, "since": ms|null, "run_id": str|null, "prepared": b64|null,
     "prepared_at": ms, "prepared_failed": bool, "partition": int|null, "expected": [stage…], "derived": [stage…],
     "aggregated": bool, "results": {stage: {"run_id": str, "at": ms, "b64": Avro single-object bytes}}}

Completion rule:
* wait until images.prepared is in; then phase 1 waits for every *expected* stage (success or
  failure both count); with derived stages (describe), phase 1 emits images.aggregated and phase 2
  waits for them;
* a failed preprocess completes the image as ``failed`` as soon as metadata is in;
* **a missing stage expires only when that stage has moved on without it** (``Progress``): the
  entry's wall-clock deadline (``join_timeout_s`` after the join first saw it) must have passed
  *and* either the stage has since reported an image that entered the same phase later than this
  one (its watermark passed this image: the result is not merely queued behind a backlog), or the
  stage has reported nothing at all for ``join_timeout_s`` (it is stalled or not deployed). A
  backlog, or downtime longer than the timeout, therefore never turns an image ``partial``: the
  stages are still working through their queue, and the join waits for them;
* an expired image completes as ``partial``, each missing stage reported failed with ``timeout``.

Duplicates (same stage, same or older ``produced_at``) and results of another run are ignored, so
redelivery is harmless. Two runs of one image in flight at once (the same photo submitted twice)
coalesce: the newer upload is analysed and the other run is *superseded*: it gets its own
``ImageAnalyzed`` with the newer run's result, so every submitter hears back. A result whose image has no prepared record is either *late* (its run is
already stored: the join merges it into the stored run) or *early* (images.prepared is still queued):
it waits, and is dropped as an orphan only after ``orphan_after_ms``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypedDict

from lensflow.streams.records import Status, ms
from lensflow.streams.topology import STAGE_OF_RECORD

PREPROCESS = "preprocess"


class JoinAction(StrEnum):
    WAIT = "wait"
    AGGREGATE = "aggregate"  # phase 1 done: emit images.aggregated for the derived stages
    COMPLETE = "complete"  # every expected result is in (or expired): write and notify
    UNPREPARED = "unprepared"  # results without images.prepared past the deadline: late or orphan


class HeldResult(TypedDict):
    run_id: str
    at: int
    b64: str


class Entry(TypedDict, total=False):
    first_seen: int
    deadline: int
    offset: int | None  # the offset of its images.prepared record: its place in the pixel stages' input
    since: int | None  # its aggregation time: its place in the derived stages' input
    partition: int | None  # the partition of the image's records (every topic the join reads is co-partitioned)
    run_id: str | None
    prepared: str | None
    prepared_at: int
    prepared_failed: bool
    expected: list[str]
    derived: list[str]
    aggregated: bool
    results: dict[str, HeldResult]
    uploaded_at: int  # of the run being analysed (which of two runs is newer)
    superseded: list[dict]  # other runs of the image that arrived meanwhile: {"run_id", "b64" (their images.prepared)}
    others: dict[str, dict[str, HeldResult]]  # results of runs whose images.prepared has not come yet, by run


@dataclass
class Decision:
    action: JoinAction
    missing: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """How far each stage has got, as this join worker sees it (in memory; a restart starts afresh,
    which only makes expiry later).

    ``watermark[(stage, partition)]``: the furthest place (``since``) of an image of that partition
    the stage has reported. A place is the image's offset in images.prepared for the pixel stages, its
    aggregation time for the derived ones: the order in which the stage reads them. Per partition,
    because order holds only within one: a stage reads partition p of its input in order and writes
    its results to partition p (same key), which the join reads in order; so once it has reported a
    later image of p, an earlier one's result is not merely queued. (Not ``produced_at``: preprocess
    finishes the images of a batch out of order.) ``last_report[stage]``: when it last reported
    anything. ``started``: when silence starts counting (worker start, or the end of a stall of the
    join itself: a store outage must not make every stage look silent)."""

    started: int
    timeout_ms: int
    watermark: dict[tuple[str, int], int] = field(default_factory=dict)
    last_report: dict[str, int] = field(default_factory=dict)

    def saw(self, stage: str, partition: int | None, since: int | None, now: int) -> None:
        self.last_report[stage] = now
        if since is not None and partition is not None and since > self.watermark.get((stage, partition), -1):
            self.watermark[(stage, partition)] = since

    def resume(self, now: int) -> None:
        """The join itself was stalled until ``now``: silence counts from here."""
        self.started = now

    def moved_on(self, stage: str, partition: int | None, since: int | None, now: int) -> bool:
        """True when ``stage`` will not report an image of ``partition`` whose phase began at ``since``:
        it has reported a later one of that partition, or nothing at all for the timeout."""
        if since is not None and partition is not None and self.watermark.get((stage, partition), -1) > since:
            return True
        return now - max(self.last_report.get(stage, 0), self.started) >= self.timeout_ms


def place(entry: Entry, stage: str) -> int | None:
    """The image's place in ``stage``'s input (see ``Progress``)."""
    return entry.get("since") if stage in (entry.get("derived") or []) else entry.get("offset")


def stage_of(record_name: str) -> str | None:
    short = record_name.rsplit(".", 1)[-1]
    if short == "ImagePrepared":
        return PREPROCESS
    return STAGE_OF_RECORD.get(short)


def new_entry(now: int, timeout_ms: int) -> Entry:
    return {"first_seen": now, "deadline": now + timeout_ms, "since": None, "run_id": None, "prepared": None,
            "expected": [], "derived": [], "aggregated": False, "results": {}}


def merge(entry: Entry | None, stage: str, raw: bytes, record: dict, now: int, timeout_ms: int,
          partition: int | None = None, offset: int | None = None) -> tuple[Entry, bool]:
    """Fold one stage record (read at ``partition``/``offset`` of its topic) into an entry."""
    entry = json.loads(json.dumps(entry)) if entry is not None else new_entry(now, timeout_ms)
    entry.setdefault("since", None)
    entry.setdefault("offset", None)
    if partition is not None:
        entry["partition"] = partition
    run_id = record["run_id"]
    at = ms(record["produced_at"])
    b64 = base64.b64encode(raw).decode()
    if stage == PREPROCESS:
        if entry["prepared"] is not None and entry["run_id"] == run_id and at <= entry.get("prepared_at", 0):
            return entry, False  # duplicate
        others = entry.setdefault("others", {})
        if entry["prepared"] is not None and entry["run_id"] != run_id:
            # two runs of one image in flight at once (the same photo submitted twice): the newer upload
            # is analysed, the other is answered with its result (``superseded``)
            mine, current = run_order(record), (entry.get("uploaded_at", 0), entry["run_id"])
            superseded = entry.setdefault("superseded", [])
            if mine < current:
                others.pop(run_id, None)
                if all(s["run_id"] != run_id for s in superseded):
                    superseded.append({"run_id": run_id, "b64": b64})
                    return entry, True
                return entry, False
            if all(s["run_id"] != entry["run_id"] for s in superseded):
                superseded.append({"run_id": entry["run_id"], "b64": entry["prepared"]})
            entry["superseded"] = [s for s in superseded if s["run_id"] != run_id]
        if entry["run_id"] not in (None, run_id):  # a new run of this image starts its own clock
            entry.update(first_seen=now, deadline=now + timeout_ms, aggregated=False)
        elif offset is not None and entry.get("offset") is not None:
            # a second images.prepared of this run (preprocess redone after a crash): the stages may
            # still be answering from the first copy, so the image's place is its earliest (a later
            # one would move a stage's watermark past images it has not read yet: see ``Progress``)
            offset = min(offset, entry["offset"])
        entry.update(prepared=b64, prepared_at=at, run_id=run_id, offset=offset, since=None, expected=list(record.get("expected_stages") or []),
                     derived=list(record.get("derived_stages") or []), prepared_failed=record["status"] == Status.FAILED,
                     uploaded_at=run_order(record)[0])
        # this run's results that came before its images.prepared (metadata always does) are its results now
        entry["results"] = {s: r for s, r in entry["results"].items() if r["run_id"] == run_id}
        for s, r in others.pop(run_id, {}).items():
            if s not in entry["results"] or r["at"] > entry["results"][s]["at"]:
                entry["results"][s] = r
        return entry, True
    if run_id != entry["run_id"]:
        # a result of another run: of a superseded one (dropped), or of one whose images.prepared is still
        # to come (kept aside under its run: the entry may switch to it)
        if any(s["run_id"] == run_id for s in entry.get("superseded", [])):
            return entry, False
        bucket = entry.setdefault("others", {}).setdefault(run_id, {})
        old = bucket.get(stage)
        if old is not None and at <= old["at"]:
            return entry, False  # duplicate
        bucket[stage] = {"run_id": run_id, "at": at, "b64": b64}
        return entry, True
    old = entry["results"].get(stage)
    if old is not None and old["run_id"] == run_id and at <= old["at"]:
        return entry, False  # duplicate
    entry["results"][stage] = {"run_id": run_id, "at": at, "b64": b64}
    return entry, True


def all_results(entry: Entry) -> list[tuple[str, HeldResult]]:
    """Every stage result the entry holds, of its run and of runs whose images.prepared has not come."""
    out = list(entry["results"].items())
    for results in (entry.get("others") or {}).values():
        out += list(results.items())
    return out


def after_completion(entry: Entry, now: int, timeout_ms: int) -> Entry | None:
    """What stays in the table once the entry's run is finished: nothing, or the results of runs whose
    images.prepared has not come yet (``others``: the same photo submitted again while this run was
    in flight; its metadata is produced before its images.prepared). Deleting them would leave that
    run waiting for results that were already read, and end it ``partial``."""
    if entry.get("prepared") is None:
        return None  # an unprepared entry's results were merged into the stored run or dropped as orphans
    others = {run: results for run, results in (entry.get("others") or {}).items()
              if run != entry.get("run_id") and all(s["run_id"] != run for s in entry.get("superseded") or [])}
    if not others:
        return None
    rest = new_entry(now, timeout_ms)
    rest["others"] = others
    return rest


def run_order(prepared: dict) -> tuple[int, str]:
    """Which of two runs of an image is newer: the later upload, ties broken by run id."""
    return ms(prepared.get("uploaded_at")) or 0, prepared["run_id"]


def aggregated(entry: Entry, now: int, timeout_ms: int) -> Entry:
    """The entry after images.aggregated was emitted: phase 2 starts its own clock."""
    return {**entry, "aggregated": True, "since": now, "deadline": max(entry["deadline"], now + timeout_ms)}


def decide(entry: Entry, now: int, progress: Progress | None = None) -> Decision:
    """What the join does with an entry now. Pure. Without ``progress`` a missing stage expires at the
    wall-clock deadline alone."""
    past_deadline = now >= entry["deadline"]
    if entry["prepared"] is None:
        return Decision(JoinAction.UNPREPARED) if past_deadline else Decision(JoinAction.WAIT)

    def expired(missing: list[str]) -> bool:
        if not missing or not past_deadline:
            return False
        return progress is None or all(progress.moved_on(s, entry.get("partition"), place(entry, s), now) for s in missing)

    reported = set(entry["results"])
    prepared_failed = entry.get("prepared_failed", False)
    phase1_missing = [s for s in entry["expected"] if s not in reported]
    if prepared_failed:
        phase1_missing = [s for s in phase1_missing if s == "metadata"]
    derived = [] if prepared_failed else entry["derived"]
    if not entry.get("aggregated"):
        if phase1_missing and not expired(phase1_missing):
            return Decision(JoinAction.WAIT, phase1_missing)
        if derived and not phase1_missing:
            return Decision(JoinAction.AGGREGATE)
        if derived:  # phase 1 expired: describe what is there rather than nothing
            return Decision(JoinAction.AGGREGATE, phase1_missing)
        return Decision(JoinAction.COMPLETE, phase1_missing)
    derived_missing = [s for s in derived if s not in reported]
    if derived_missing and not expired(derived_missing):
        return Decision(JoinAction.WAIT, derived_missing)
    return Decision(JoinAction.COMPLETE, phase1_missing + derived_missing)
