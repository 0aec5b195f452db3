from lensflow.streams.topology import ANALYSIS_STAGES, STAGES, TOPICS, plan_for

import pytest


def test_every_stage_reads_and_writes_known_topics():
    for stage in STAGES.values():
        for t in stage.reads + stage.writes:
            assert t in TOPICS, (stage.name, t)


def test_join_reads_every_result_topic():
    join = STAGES["join"]
    for s in ANALYSIS_STAGES:
        assert STAGES[s].writes[0] in join.reads


def test_plan_always_includes_metadata_and_splits_derived():
    plan = plan_for([], ["metadata"])
    assert plan.expected == ["metadata"] and plan.derived == []


def test_plan_rejects_unknown_and_unavailable_stages():
    with pytest.raises(ValueError, match="unknown"):
        plan_for(["colour"], ["metadata"])
