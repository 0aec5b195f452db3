"""Which source offsets a worker may commit: only a run of offsets that *every* agent reading the
partition has acknowledged, starting at the partition's committed offset.

faust-streaming 0.15.3's ``Consumer._new_offset`` (faust/transport/consumer.py) commits the first run
of consecutive acknowledged offsets, and guards against a missing head only with
``if committed_offset: if min(acked) - committed_offset > 1: return None``. So it commits past an
offset that was never acknowledged when

* the partition has no committed offset yet (``None``, or 0, which ``perform_seek`` also stores as
  None): acked ``[1, 2, 3]`` with offset 0 still in an agent's hands commits 4;
* exactly one offset at the head is missing: committed 28, acked ``[29, 30, 31]`` commits 32.

A message can be acknowledged by some agents' streams and not (yet) by another's: several agents
read images.prepared, and a dispatch to a full channel, or a stream skipping a message of an older
consumer generation, leaves it un-acknowledged while its successors are. With such a commit, a
``kill -9`` then loses the message for the agents that had not processed it: it happened in
``tests/integration/test_chaos.py`` (the OCR stage, the slowest reader, never saw two images, whose
offsets 0 and 4 were the heads of their partitions; every other stage published their results two
or three times).

``StrictOffsets`` (mixed into the aiokafka driver's consumer by ``consumer_class``) commits only a
run that starts exactly at the head: the committed offset, or where consumption starts when there
is none (the partition's earliest offset, asked for once per assignment), or the end of the run
handed out last. A head that stays un-acknowledged holds the partition's commits back (nothing is
lost: a restart redelivers from it) and is logged as ``offset_not_acknowledged`` once a minute.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

log = structlog.get_logger("lensflow")

#: Seconds an un-acknowledged head may hold a partition's commits back before it is logged.
STUCK_LOG_S = 60.0


def committable(acked: list[int], head: int | None) -> tuple[int | None, int]:
    """For the sorted acknowledged offsets of one partition and its ``head`` (the first offset not yet
    committed): the offset to commit (one past the run of consecutive offsets starting at ``head``),
    or None, and how many leading entries of ``acked`` that consumes (entries below ``head`` are
    stale and consumed too)."""
    stale = 0
    while stale < len(acked) and head is not None and acked[stale] < head:
        stale += 1
    if head is None or stale == len(acked) or acked[stale] != head:
        return None, stale
    end = stale
    while end + 1 < len(acked) and acked[end + 1] == acked[end] + 1:
        end += 1
    return acked[end] + 1, end + 1


class StrictOffsets:
    """Mixin for faust's consumer (see the module docstring): ``_new_offset`` never skips an offset."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lf_start: dict[Any, int] = {}  # tp -> earliest offset at the last seek
        self._lf_handed: dict[Any, int] = {}  # tp -> one past the last run handed out for commit
        self._lf_stuck: dict[Any, tuple[int, float, float]] = {}  # tp -> (head, since, last logged)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        for state in (self._lf_start, self._lf_handed, self._lf_stuck):
            state.clear()
        tps = [tp for tp in self.assignment() if self.app.topics.acks_enabled_for(tp.topic)]
        if tps:
            try:
                earliest = await self.earliest_offsets(*tps)
                self._lf_start.update({tp: off for tp, off in earliest.items() if off is not None})
            except Exception as exc:  # without them, a partition with no committed offset falls back to faust's rule
                log.warning("earliest_offsets_unavailable", error=f"{type(exc).__name__}: {exc}")

    async def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            for state in (self._lf_start, self._lf_handed, self._lf_stuck):
                state.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    def _head(self, tp) -> int | None:
        known = [x for x in (self._committed_offset.get(tp), self._lf_start.get(tp), self._lf_handed.get(tp))
                 if x is not None]
        return max(known) if known else None

    def _new_offset(self, tp) -> int | None:
        head = self._head(tp)
        if head is None:
            return super()._new_offset(tp)
        acked = self._acked[tp]
        if not acked:
            return None
        gaps = self._gap[tp]
        if gaps:  # offsets that will never arrive (faust records them as it reads) count as acknowledged
            max_offset = max(acked)
            covered = sorted(gaps.overlap(0, max_offset), key=lambda iv: iv.begin)
            if covered:
                filled = [o for iv in covered for o in range(iv.begin, iv.end)]
                acked.extend(filled)
                gaps.chop(0, max(filled[-1], max_offset + 1))
        acked.sort()
        offset, consumed = committable(acked, head)
        if consumed:
            self._acked_index[tp].difference_update(acked[:consumed])
            del acked[:consumed]
        if offset is None:
            if acked:
                self._report_stuck(tp, head)
            return None
        self._lf_handed[tp] = offset
        self._lf_stuck.pop(tp, None)
        return offset

    def _report_stuck(self, tp, head: int) -> None:
        now = time.monotonic()
        was, since, logged = self._lf_stuck.get(tp, (None, now, 0.0))
        if was != head:
            since, logged = now, 0.0
        if now - since >= STUCK_LOG_S and now - logged >= STUCK_LOG_S:
            log.warning("offset_not_acknowledged", topic=tp.topic, partition=tp.partition, offset=head,
                        seconds=round(now - since), acknowledged_after=len(self._acked[tp]),
                        reason="commits of this partition wait for it; a restart redelivers from it")
            logged = now
        self._lf_stuck[tp] = (head, since, logged)


def consumer_class(base: type) -> type:
    """``base`` (faust's aiokafka driver ``Consumer``) with ``StrictOffsets``."""

    class StrictConsumer(StrictOffsets, base):
        pass

    StrictConsumer.logger = base.logger  # mode names a subclass's logger after its module
    return StrictConsumer
