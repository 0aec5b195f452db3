"""Dead letters, read and planned for replay (the commands, `lensflow deadletter list|show|replay`, are
``cli/deadletter.py``): look at what the stages gave up on, and run it again.

Every stage sends a record it could not process to ``images.deadletter`` as a ``DeadLetter``: the
source record's bytes as received (``value``), why (``error``), the image/user/run when the record
could be decoded, and — for stages that hold several records of an image, i.e. the join — every
other record it held (``inputs``: images.prepared and each stage result).

* ``list`` reads the dead-letter topic from the beginning (or from ``--since``) up to its end *as it
  was when the command started* — it never waits for new records — and prints one line per dead
  letter (``--json``: one JSON object a line), then a count. ``--stage``, ``--code``, ``--since``
  and ``--image`` select. A dead letter is named by its own place in the topic, ``PARTITION:OFFSET``.
* ``show PARTITION:OFFSET`` prints one dead letter whole, with its original record decoded (raw bytes
  as hex when they are not a lensflow record: a poison record) and each of ``inputs`` decoded.
* ``replay`` re-runs each selected image **from its upload, as a new run**, whatever stage gave up:
  it rebuilds the ``ImageUploaded`` event from the original record (an upload as is; an
  ``ImagePrepared`` — directly, inside an ``ImageAggregated``, or among the join's ``inputs`` — gives
  back the source URI, owner, stages and upload time) and produces it to ``images.uploaded`` with the
  project's idempotent murmur2 producer, keyed by image id. Records that cannot be rebuilt (a poison
  record with nothing decodable beside it) are skipped, with the reason.

Why a new run rather than re-injecting the failed record where it failed: a run is the unit the join
completes, stores and announces — each (image, run) gets at most one ``images.analyzed`` event — and
the run that failed was already completed (failed or partial) or abandoned, so its results cannot be
amended in place. The new run id is derived from the dead letter,
``<original run id>~replay-<partition>-<offset>``, so replaying the same dead letter twice is
idempotent: the second replay carries the same run id and the join rewrites the same stored run.
When several selected dead letters belong to one image, only the newest replayable one is replayed
(one run per image); the others are reported as superseded. A dead letter of a re-analysis
(``ImagePrepared`` with ``mode=merge``, from ``lensflow reanalyze``) is skipped: a full run with only
the re-analysed stage would drop the image's other stages — run ``lensflow reanalyze`` again instead.

Exit codes as the rest of the CLI: 0 ok (skipped dead letters included), 2 errors; ``replay --wait``:
1 when a replayed image failed again, 4 when one was not analyzed within ``--timeout``.
"""

from __future__ import annotations

import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from .codec import CodecError
from .kafka import kafka_conf
from .records import ms
from .topology import DEADLETTER

#: ``source`` of the ImageUploaded events a replay produces.
REPLAY_SOURCE = "lensflow-deadletter-replay"
UPLOADED_RECORD = "lensflow.v1.ImageUploaded"
PREPARED_RECORD = "lensflow.v1.ImagePrepared"
AGGREGATED_RECORD = "lensflow.v1.ImageAggregated"
#: ``--since`` starts reading this much before the given time (by Kafka timestamp), then filters
#: exactly on ``failed_at``: a record is timestamped when produced, just after its ``failed_at``.
SINCE_MARGIN = timedelta(minutes=5)



class DeadLetterError(Exception):
    """The dead-letter topic cannot be read as asked (Kafka down, no such topic, partition or offset):
    one line for the user."""


class _NoProgress:
    def add_task(self, *a, **k):
        return None

    def advance(self, *a, **k):
        pass


# ----------------------------------------------------------------------------------------------
# pure parts (unit-tested)
# ----------------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a relative age (``30s``, ``30m``, ``2h``, ``1d``, ``1w``) before ``now``, or an ISO
    date (``2024-05-01``: midnight UTC) or datetime (``2024-05-01T12:00``, ``…Z``, ``…+02:00``; no
    offset means UTC). Returns an aware UTC datetime; ValueError otherwise."""
    now = now or datetime.now(timezone.utc)
    m = _RELATIVE.match(text)
    if m:
        return now - timedelta(**{_UNITS[m.group(2).lower()]: float(m.group(1))})
    raw = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            d = date.fromisoformat(raw)
            return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        dt = datetime.fromisoformat(raw.replace(" ", "T", 1))
    except ValueError:
        raise ValueError(f"--since {text!r}: expected an age like 30m, 2h, 1d or an ISO date/datetime like "
                         "2024-05-01 or 2024-05-01T12:00Z") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def letter_id(partition: int, offset: int) -> str:
    """A dead letter's name: its own place in the dead-letter topic."""
    return f"{partition}:{offset}"


def parse_letter_id(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+):(\d+)\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not a dead letter id (PARTITION:OFFSET of the dead-letter topic, as `list` prints)")
    return int(m.group(1)), int(m.group(2))


def replay_run_id(original_run_id: str, partition: int, offset: int) -> str:
    """The run a replay of the dead letter at ``partition:offset`` starts: deterministic, so replaying
    the same dead letter twice is the same run (the join rewrites it) and not a second one."""
    return f"{original_run_id}~replay-{partition}-{offset}"


@dataclass
class Letter:
    """One record of the dead-letter topic: where it lies and what it says (``record`` is the decoded
    DeadLetter; None with ``error`` when the dead letter itself does not decode)."""
    partition: int
    offset: int
    record: dict | None
    timestamp_ms: int | None = None  # Kafka timestamp
    error: str | None = None

    @property
    def id(self) -> str:
        return letter_id(self.partition, self.offset)

    @property
    def failed_at(self) -> datetime | None:
        if self.record is not None:
            return _aware(self.record.get("failed_at"))
        if self.timestamp_ms is not None:
            return datetime.fromtimestamp(self.timestamp_ms / 1000, timezone.utc)
        return None


def _aware(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000, timezone.utc)
    return None


@dataclass(frozen=True)
class Filter:
    """The selection of ``--stage``, ``--code``, ``--since``, ``--image`` (and replay's ids); unset = any."""
    stage: str | None = None
    code: str | None = None
    since: datetime | None = None
    image: str | None = None
    ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def narrows_by_content(self) -> bool:
        return any(x is not None for x in (self.stage, self.code, self.image))

    def matches(self, letter: Letter) -> bool:
        if self.ids and letter.id not in self.ids:
            return False
        if self.since is not None:
            failed_at = letter.failed_at
            if failed_at is None or failed_at < self.since:
                return False
        dl = letter.record
        if dl is None:  # an undecodable dead letter has no stage, code or image to match
            return not self.narrows_by_content
        if self.stage is not None and dl.get("stage") != self.stage:
            return False
        if self.code is not None and (dl.get("error") or {}).get("code") != self.code:
            return False
        if self.image is not None and dl.get("image_id") != self.image:
            return False
        return True

    def select(self, letters: list[Letter]) -> list[Letter]:
        return [x for x in letters if self.matches(x)]


def decode_value(codec, data: bytes | None) -> tuple[str | None, dict | None, str | None]:
    """(record name, record, None) for lensflow bytes; (None, None, why) otherwise (a poison record)."""
    try:
        name, rec = codec.decode(data)
        return name, rec, None
    except CodecError as exc:
        return None, None, str(exc)


def _prepared_in_inputs(dl: dict, codec) -> dict | None:
    """The ImagePrepared among a dead letter's ``inputs`` (the join's), preferring the dead letter's run."""
    found = []
    for item in dl.get("inputs") or []:
        name, rec, _ = decode_value(codec, item.get("value"))
        if name == PREPARED_RECORD:
            found.append(rec)
    same_run = [r for r in found if dl.get("run_id") and r.get("run_id") == dl.get("run_id")]
    return (same_run or found or [None])[-1]


def _upload_from_prepared(prepared: dict) -> dict:
    stages = list(dict.fromkeys([*(prepared.get("expected_stages") or []), *(prepared.get("derived_stages") or [])]))
    return {"image_id": prepared["image_id"], "user_id": prepared["user_id"], "run_id": prepared["run_id"],
            "uri": prepared["source_uri"], "content_type": None, "size_bytes": None,
            "uploaded_at": prepared["uploaded_at"], "stages": stages or None, "source": None, "attributes": {}}


def upload_from_deadletter(dl: dict, codec, partition: int, offset: int) -> tuple[dict | None, str]:
    """The ImageUploaded event that re-runs the image of dead letter ``dl`` (a decoded DeadLetter lying
    at ``partition:offset`` of the dead-letter topic) from its upload, as a new run.

    Returns ``(upload, how)`` — ``how`` says which record it was rebuilt from — or ``(None, why)``
    when nothing can be replayed. Pure: no I/O beyond decoding with ``codec``.
    """
    name, original, why = decode_value(codec, dl.get("value"))
    short = (name or "").rsplit(".", 1)[-1]
    prepared, how = None, ""
    if name == UPLOADED_RECORD:
        upload, how = dict(original), f"from its {short}"
    else:
        if name == PREPARED_RECORD:
            prepared, how = original, f"from its {short}"
        elif name == AGGREGATED_RECORD:
            prepared, how = original.get("prepared"), f"from the ImagePrepared inside its {short}"
        if prepared is None:
            prepared = _prepared_in_inputs(dl, codec)
            how = f"from the ImagePrepared among its inputs (the record itself is {short or 'not decodable'})"
        if prepared is None:
            n = len(dl.get("inputs") or [])
            if name is None:
                return None, f"poison record: not decodable ({why}), nothing to replay"
            if name == AGGREGATED_RECORD:
                return None, "ImageAggregated without its ImagePrepared: no upload to rebuild"
            return None, f"a {short} and no ImagePrepared among its {n} input(s): no upload to rebuild"
        if prepared.get("mode", "full") == "merge":
            stages = ",".join(prepared.get("expected_stages") or []) or "?"
            return None, (f"a re-analysis (mode=merge) of {stages}: a full run would drop the image's other stages; "
                          f"run `lensflow reanalyze --stage {stages}` again instead")
        upload = _upload_from_prepared(prepared)
    if dl.get("image_id") and upload["image_id"] != dl["image_id"]:
        return None, f"inconsistent dead letter: image {dl['image_id']} but its record is of image {upload['image_id']}"
    code = (dl.get("error") or {}).get("code") or "unknown"
    upload["run_id"] = replay_run_id(dl.get("run_id") or upload["run_id"], partition, offset)
    upload["source"] = REPLAY_SOURCE
    upload["attributes"] = {**(upload.get("attributes") or {}), "replay_of": letter_id(partition, offset),
                            "replay_code": code, "replay_stage": dl.get("stage") or "unknown"}
    return upload, how


@dataclass
class ReplayDecision:
    """What ``replay`` does with one selected dead letter."""
    letter: Letter
    upload: dict | None  # set when it is replayed
    reason: str  # how the upload was rebuilt, or why it is skipped

    @property
    def replayed(self) -> bool:
        return self.upload is not None

    @property
    def image_id(self) -> str | None:
        if self.upload is not None:
            return self.upload["image_id"]
        return (self.letter.record or {}).get("image_id")


def plan_replay(letters: list[Letter], codec) -> list[ReplayDecision]:
    """One decision per dead letter, in the order given: the newest replayable dead letter of each
    image is replayed (by ``failed_at``, then position), every other one is skipped with the reason."""
    decisions = []
    for letter in letters:
        if letter.record is None:
            decisions.append(ReplayDecision(letter, None, f"the dead letter itself does not decode ({letter.error})"))
            continue
        upload, how = upload_from_deadletter(letter.record, codec, letter.partition, letter.offset)
        decisions.append(ReplayDecision(letter, upload, how))
    newest: dict[str, ReplayDecision] = {}
    for d in decisions:
        if d.replayed:
            best = newest.get(d.image_id)
            if best is None or _chronological(d.letter) > _chronological(best.letter):
                newest[d.image_id] = d
    for d in decisions:
        if d.replayed and newest[d.image_id] is not d:
            d.upload, d.reason = None, f"superseded by {newest[d.image_id].letter.id}, a newer dead letter of the same image (one run per image)"
    return decisions


def jsonable(value: Any) -> Any:
    """Records as JSON: datetimes ISO 8601, bytes as UTF-8 text when they are, else ``hex:…``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            text = raw.decode("utf-8")
            if text.isprintable():
                return text
        except UnicodeDecodeError:
            pass
        return "hex:" + raw.hex()
    return value


def expand(dl: dict, codec) -> dict:
    """A dead letter for `show`: its original record and each input decoded (hex when they are not)."""

    def one(data: bytes | None) -> dict:
        name, rec, why = decode_value(codec, data)
        if name is not None:
            return {"record": name, "decoded": rec}
        return {"record": None, "error": why, "hex": bytes(data or b"").hex()}

    out = {k: v for k, v in dl.items() if k not in ("value", "inputs")}
    out["value"] = one(dl.get("value"))
    out["inputs"] = [{"topic": i.get("topic"), "key": i.get("key"), **one(i.get("value"))} for i in dl.get("inputs") or []]
    return out


def summary(letter: Letter) -> dict:
    """One dead letter as `list --json` prints it."""
    dl = letter.record
    if dl is None:
        return {"id": letter.id, "partition": letter.partition, "offset": letter.offset, "decodable": False,
                "error": letter.error, "failed_at": jsonable(letter.failed_at)}
    err = dl.get("error") or {}
    return {"id": letter.id, "partition": letter.partition, "offset": letter.offset, "failed_at": jsonable(letter.failed_at),
            "first_failed_at": jsonable(_aware(dl.get("first_failed_at"))), "stage": dl.get("stage"), "code": err.get("code"),
            "message": err.get("message"), "retryable": err.get("retryable"), "attempts": err.get("attempts"),
            "image_id": dl.get("image_id"), "user_id": dl.get("user_id"), "run_id": dl.get("run_id"), "record": dl.get("record"),
            "source": {"topic": dl.get("topic"), "partition": dl.get("partition"), "offset": dl.get("offset")},
            "inputs": len(dl.get("inputs") or [])}


def _abbreviate(value: Any) -> Any:
    """For the text view of `show`: long vectors summarised."""
    if isinstance(value, dict):
        return {k: _abbreviate(v) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > 8 and all(isinstance(v, (int, float)) for v in value):
            head = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value[:4])
            return f"[{len(value)} numbers: {head}, …]"
        return [_abbreviate(v) for v in value]
    return value


def _chronological(letter: Letter) -> tuple:
    return (letter.failed_at or datetime.min.replace(tzinfo=timezone.utc), letter.partition, letter.offset)


def _when(dt: datetime | None) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if dt else "-"


# ----------------------------------------------------------------------------------------------
# Kafka
# ----------------------------------------------------------------------------------------------

def _consumer(s):

    return Consumer({**kafka_conf(s), "group.id": "lensflow-cli-deadletter",
                     "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": False,
                     "log_level": 2})  # connection failures are reported as one line (DeadLetterError), not rdkafka logs


def _partitions(consumer, s, topic: str) -> list[int]:
    try:
        meta = consumer.list_topics(timeout=10)  # all topics: asking for one could auto-create it
    except KafkaException as exc:
        raise DeadLetterError(f"Kafka at {s.kafka_bootstrap} did not answer ({exc})") from None
    if topic not in meta.topics or meta.topics[topic].error is not None:
        raise DeadLetterError(f"topic {topic} does not exist (create the topics: `lensflow init --topics-only`)")
    return sorted(meta.topics[topic].partitions)


def read_letters(s, codec, since: datetime | None = None, progress=None, stall_s: float = 20.0) -> list[Letter]:
    """Every dead letter from the start of the topic (or from about ``since``) up to the high watermarks
    captured now: what arrives meanwhile is not waited for. ``progress``: a rich ``Progress`` (a context
    manager with ``add_task``/``advance``) to show the reading on; none by default."""

    topic = s.topic(DEADLETTER)
    consumer = _consumer(s)
    letters: list[Letter] = []
    try:
        partitions = _partitions(consumer, s, topic)
        bounds = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        start = {p: low for p, (low, _) in bounds.items()}
        if since is not None and partitions:
            at = ms(since - SINCE_MARGIN)
            for tp in consumer.offsets_for_times([TopicPartition(topic, p, at) for p in partitions], timeout=10):
                start[tp.partition] = tp.offset if tp.offset >= 0 else bounds[tp.partition][1]
        end = {p: high for p, (_, high) in bounds.items() if max(start[p], bounds[p][0]) < high}
        if not end:
            return letters
        consumer.assign([TopicPartition(topic, p, max(start[p], bounds[p][0])) for p in end])
        last_progress = time.monotonic()
        with (progress if progress is not None else nullcontext(_NoProgress())) as bar:
            task = bar.add_task("reading dead letters", total=sum(end[p] - max(start[p], bounds[p][0]) for p in end))
            while end:
                msgs = consumer.consume(500, timeout=1.0)
                for msg in msgs:
                    if msg.error() is not None:
                        if msg.error().fatal():
                            raise DeadLetterError(f"reading {topic}: {msg.error()}")
                        continue
                    p, off = msg.partition(), msg.offset()
                    if p not in end or off >= end[p]:
                        continue
                    ts_type, ts = msg.timestamp()
                    try:
                        _, rec = codec.decode(msg.value(), expect="DeadLetter")
                        letters.append(Letter(p, off, rec, ts if ts_type else None))
                    except CodecError as exc:
                        letters.append(Letter(p, off, None, ts if ts_type else None, error=str(exc)))
                    bar.advance(task)
                    last_progress = time.monotonic()
                    if off + 1 >= end[p]:
                        del end[p]
                if end and not msgs:
                    # the end may be past the last record (transaction markers, deleted records)
                    for tp in consumer.position([TopicPartition(topic, p) for p in end]):
                        if tp.offset >= end.get(tp.partition, 0):
                            end.pop(tp.partition, None)
                    if end and time.monotonic() - last_progress > stall_s:
                        left = ", ".join(f"{p}@{end[p]}" for p in sorted(end))
                        raise DeadLetterError(f"reading {topic} stalled for {stall_s:.0f}s before the end of partition(s) {left}")
    finally:
        consumer.close()
    return letters


def read_one(s, codec, partition: int, offset: int, timeout_s: float = 20.0) -> Letter:

    topic = s.topic(DEADLETTER)
    consumer = _consumer(s)
    try:
        partitions = _partitions(consumer, s, topic)
        if partition not in partitions:
            raise DeadLetterError(f"{topic} has no partition {partition} (partitions {partitions[0]}..{partitions[-1]})")
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if not low <= offset < high:
            held = f"offsets {low}..{high - 1}" if high > low else "no records"
            raise DeadLetterError(f"no dead letter {letter_id(partition, offset)}: partition {partition} of {topic} holds {held}")
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            if msg.offset() != offset:
                raise DeadLetterError(f"no dead letter {letter_id(partition, offset)} (the next record is at offset {msg.offset()})")
            ts_type, ts = msg.timestamp()
            try:
                _, rec = codec.decode(msg.value(), expect="DeadLetter")
                return Letter(partition, offset, rec, ts if ts_type else None)
            except CodecError as exc:
                return Letter(partition, offset, None, ts if ts_type else None, error=str(exc))
        raise DeadLetterError(f"dead letter {letter_id(partition, offset)} not read within {timeout_s:.0f}s")
    finally:
        consumer.close()
