"""Reading counters back from a worker's /metrics text."""

from lensflow.streams.observability import Metrics, counter_values


def test_counter_values_by_label():
    m = Metrics()
    m.stage_cpu.labels("text").inc(1.5)
    m.stage_cpu.labels("faces").inc(0.25)
    m.decoded.labels("hit").inc(3)
    text = m.exposition().decode()
    assert counter_values(text, "lensflow_stage_cpu_seconds") == {"text": 1.5, "faces": 0.25}
    assert counter_values(text, "lensflow_decoded_cache") == {"hit": 3.0}
    assert counter_values(text, "lensflow_deadletters") == {}


def test_cpu_timed_counts_the_calling_threads_cpu_even_when_it_raises():
    import pytest

    m = Metrics()

    def burn(n):
        return sum(i * i for i in range(n))

    assert m.cpu_timed("text", burn, 200_000) == burn(200_000)
    spent = counter_values(m.exposition().decode(), "lensflow_stage_cpu_seconds")["text"]
    assert spent > 0
    with pytest.raises(ZeroDivisionError):
        m.cpu_timed("text", lambda: (burn(200_000), 1 / 0))
    assert counter_values(m.exposition().decode(), "lensflow_stage_cpu_seconds")["text"] > spent


def test_faust_s_own_sensor_is_served_with_lensflow_s_metrics(tmp_path):
    """Rebalances, committed offsets and end offsets per partition, from Faust's Prometheus sensor, on
    the same /metrics as lensflow's own (prefix faust_ for every stage group)."""
    from lensflow.streams.app import build
    from lensflow.streams.settings import Settings

    _, ctx = build(Settings(_env_file=None, data_dir=tmp_path), ["preprocess"])
    text = ctx.metrics.exposition().decode()
    for name in ("faust_total_rebalances", "faust_topic_partition_offset_commited", "faust_topic_partition_end_offset",
                 "faust_consumer_commit_latency", "lensflow_stage_seconds"):
        assert f"# TYPE {name} " in text, name
