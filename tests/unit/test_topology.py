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


def test_every_stage_group_is_its_own_consumer_group():
    from lensflow.streams.topology import GROUPS, RUNNABLE, consumer_group

    assert consumer_group("lf", RUNNABLE) == "lf"  # the whole pipeline in one process
    ids = {consumer_group("lf", members) for members in GROUPS.values()}
    assert ids == {"lf-preprocess", "lf-vision", "lf-sink"}
    assert consumer_group("lf", ["text", "objects"]) == "lf-objects-text"  # any other split: its own too
    assert consumer_group("lf", ["objects"], group="gpu") == "lf-gpu"
    # the default groups cover every runnable stage exactly once
    assert sorted(s for members in GROUPS.values() for s in members) == sorted(RUNNABLE)


def test_a_split_without_a_qdrant_server_must_keep_faces_and_join_together():
    from lensflow.streams.topology import split_problem

    assert split_problem(["faces", "describe", "join"], None) is None
    assert split_problem(["objects", "scene"], None) is None
    assert "LENSFLOW_QDRANT_URL" in split_problem(["faces"], None)
    assert split_problem(["join"], None) is None  # faces may not be deployed at all
    assert split_problem(["faces", "objects"], "http://qdrant:6333") is None


def test_a_plain_upload_gets_the_whole_analysis():
    from lensflow.streams.settings import Settings
    from lensflow.streams.topology import AVAILABLE_STAGES, plan_for

    plan = plan_for(None, Settings(_env_file=None).stages)
    assert set(plan.expected + plan.derived) == set(AVAILABLE_STAGES)
    assert plan_for(None, ["metadata"]).expected == ["metadata"]  # LENSFLOW_STAGES=metadata: EXIF only
