"""``GET /v1/events``: Server-Sent Events of the caller's own ``images.analyzed`` (the seed's "notify
the user that their image is analysed and ready").

Each stream reads the topic itself with a consumer that is *assigned* its partitions (no consumer
group membership, nothing committed): from the topic's current end, or, when the client reconnects
with ``Last-Event-ID``, from the position that id names. An event id is the position of the stream
*after* that event on every partition (``0-15.1-20.2-3``: partition-next offset), so a reconnect
resumes with no gap and no repeat within the topic's retention, whichever partition the next event
comes from. Records of other users advance the position but are never sent.

The consumer's ``poll`` blocks, so each stream runs it on a thread of its own and hands records to the
event loop through a bounded queue; a client too slow to drain it is disconnected, and resumes from its
last event id.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import AsyncIterator

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from lensflow.streams.codec import Codec
from lensflow.streams.kafka import kafka_conf
from lensflow.streams.settings import Settings
from lensflow.streams.topology import ANALYZED

#: seconds between two keep-alive comments (proxies close idle connections after 30-60 s)
KEEPALIVE_S = 15.0
#: records queued for one client before it is disconnected as too slow
QUEUE_MAX = 1_000
#: what a client waits before reconnecting (the SSE ``retry`` field, milliseconds)
RETRY_MS = 3_000


class BadPosition(ValueError):
    """A Last-Event-ID that is not one of ours."""


def parse_position(text: str | None) -> dict[int, int]:
    """partition -> next offset of a ``Last-Event-ID`` ({} for none)."""
    if not text or not text.strip():
        return {}
    out: dict[int, int] = {}
    try:
        for part in text.strip().split("."):
            p, o = part.split("-")
            out[int(p)] = int(o)
    except ValueError:
        raise BadPosition(f"Last-Event-ID {text[:60]!r} is not an event id of this service") from None
    if any(p < 0 or o < 0 for p, o in out.items()) or len(out) > 10_000:
        raise BadPosition(f"Last-Event-ID {text[:60]!r} is not an event id of this service")
    return out


def format_position(position: dict[int, int]) -> str:
    return ".".join(f"{p}-{o}" for p, o in sorted(position.items()))


def event_data(rec: dict) -> dict:
    """What one ``analyzed`` event carries: the image, its run and status, and its summary."""
    summary = rec.get("summary")
    return {"image_id": rec["image_id"], "run_id": rec["run_id"], "status": str(rec["status"]),
            "analysis_version": rec["analysis_version"], "caption": rec.get("caption"),
            "tags": [t.get("tag") for t in rec.get("tags") or []][:50],
            "summary": summary, "error": rec.get("error"),
            "analyzed_at": rec["analyzed_at"].isoformat() if hasattr(rec.get("analyzed_at"), "isoformat") else rec.get("analyzed_at"),
            "taken_at": rec["taken_at"].isoformat() if hasattr(rec.get("taken_at"), "isoformat") else rec.get("taken_at")}


class AnalyzedReader:
    """One client's reader of ``images.analyzed``, on its own thread."""

    def __init__(self, settings: Settings, codec: Codec, user: str, start: dict[int, int],
                 loop: asyncio.AbstractEventLoop):
        self.settings = settings
        self.codec = codec
        self.user = user
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_MAX)
        self.stop = threading.Event()
        self.failed: str | None = None
        self.topic = settings.topic(ANALYZED)
        # no group membership: assign() only; the id is required by the client, never committed to
        self.consumer = Consumer({**kafka_conf(self.settings), "group.id": f"lensflow-api-events-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False, "enable.auto.offset.store": False,
                                  "auto.offset.reset": "earliest"})
        partitions = sorted(self.consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions)
        self.position: dict[int, int] = {}
        assignment = []
        for p in partitions:
            if p in start:
                offset = start[p]
            else:
                _, offset = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
            self.position[p] = offset
            assignment.append(TopicPartition(self.topic, p, offset if offset >= 0 else OFFSET_END))
        self.consumer.assign(assignment)
        self.thread = threading.Thread(target=self._run, name="api-events", daemon=True)
        self.thread.start()

    def _put(self, item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.failed = "too slow: reconnect with Last-Event-ID"
            self.stop.set()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                msg = self.consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                self.position[msg.partition()] = msg.offset() + 1
                try:
                    _, rec = self.codec.decode(msg.value(), expect="ImageAnalyzed")
                except Exception:  # noqa: BLE001  (not ours to judge: the stream's dead letters are)
                    continue
                if rec.get("user_id") != self.user:
                    continue
                item = (format_position(self.position), event_data(rec))
                self.loop.call_soon_threadsafe(self._put, item)
        except Exception as exc:  # noqa: BLE001  (the client sees the stream end and reconnects)
            self.failed = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                self.consumer.close()
            except Exception:  # noqa: BLE001
                pass
            self.loop.call_soon_threadsafe(self._put_end)

    def _put_end(self) -> None:
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            pass

    def close(self) -> None:
        self.stop.set()


async def stream(reader: AnalyzedReader) -> AsyncIterator[str]:
    """The SSE text of ``reader``'s events, with keep-alive comments; ends when the reader does."""
    yield f"retry: {RETRY_MS}\n: lensflow events of {reader.user} from {format_position(reader.position)}\n\n"
    try:
        while True:
            try:
                item = await asyncio.wait_for(reader.queue.get(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is None:
                if reader.failed:
                    yield f": closed ({reader.failed})\n\n"
                return
            event_id, data = item
            yield f"event: analyzed\nid: {event_id}\ndata: {json.dumps(data, default=str)}\n\n"
    finally:
        reader.close()
