"""Offsets a worker may commit: never past one an agent has not acknowledged (streams/offsets.py)."""

from collections import defaultdict

from faust.transport.consumer import Consumer
from faust.types import TP

from lensflow.streams.offsets import StrictOffsets, committable

TP0 = TP("t.images.prepared", 0)


def test_committable_is_the_run_starting_at_the_head():
    assert committable([28, 29, 30, 32], 28) == (31, 3)
    assert committable([29, 30, 31], 28) == (None, 0)  # 28 not acknowledged: nothing to commit
    assert committable([1, 2, 3], 0) == (None, 0)
    assert committable([25, 26, 28, 29], 28) == (30, 4)  # entries below the head are stale, consumed
    assert committable([], 5) == (None, 0)
    assert committable([3], None) == (None, 0)


class Fake(StrictOffsets):
    """The state faust's consumer keeps, without a broker."""

    def __init__(self, committed, acked, start=None):
        from faust.transport.consumer import IntervalTree

        self._committed_offset = defaultdict(lambda: None, {TP0: committed})
        self._acked = defaultdict(list, {TP0: list(acked)})
        self._acked_index = defaultdict(set, {TP0: set(acked)})
        self._gap = defaultdict(IntervalTree)
        self._lf_start = {} if start is None else {TP0: start}
        self._lf_handed, self._lf_stuck = {}, {}


def faust_rule(committed, acked):
    return Consumer._new_offset(Fake(committed, acked), TP0)


def test_faust_skips_an_unacknowledged_head_and_strict_offsets_do_not():
    # faust-streaming's own rule: what made the chaos test lose OCR results
    assert faust_rule(None, [1, 2, 3]) == 4
    assert faust_rule(28, [29, 30, 31]) == 32
    assert Fake(None, [1, 2, 3], start=0)._new_offset(TP0) is None
    assert Fake(28, [29, 30, 31])._new_offset(TP0) is None


def test_strict_offsets_commit_in_runs_and_move_the_head_on():
    c = Fake(28, [28, 29, 31])
    assert c._new_offset(TP0) == 30
    assert c._acked[TP0] == [31] and c._acked_index[TP0] == {31}
    assert c._new_offset(TP0) is None  # 30 still out (the commit of 30 may not be confirmed yet)
    c._acked[TP0].append(30)
    c._acked_index[TP0].add(30)
    assert c._new_offset(TP0) == 32


def test_a_partition_without_committed_offset_starts_at_its_earliest():
    c = Fake(None, [0, 1, 2], start=0)
    assert c._new_offset(TP0) == 3
    truncated = Fake(10, [40, 41], start=40)  # retention removed 10..39: the head is the earliest offset
    assert truncated._new_offset(TP0) == 42


def test_gaps_faust_recorded_count_as_acknowledged():
    c = Fake(5, [5, 6, 9])
    c._gap[TP0].addi(7, 9)  # 7 and 8 will never arrive
    assert c._new_offset(TP0) == 10
