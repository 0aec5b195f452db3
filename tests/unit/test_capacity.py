"""bench/capacity.py: the capacity table per stage group adds up to the worker's measured CPU."""

import json

from bench.capacity import capacity
from tests.conftest import ROOT


def test_groups_add_up_to_the_worker_cpu_and_pods_scale_with_the_rate():
    result = json.loads((ROOT / "bench" / "results-stages-session3.json").read_text())
    rows = capacity(result, 50.0, 2.0)
    assert [r["group"] for r in rows] == ["preprocess", "vision", "sink"]
    total = sum(r["cpu_ms_per_image"] for r in rows)
    assert abs(total - result["end_to_end"]["worker_cpu_ms_per_image"]) < 1.0
    more = capacity(result, 100.0, 2.0)
    assert all(m["pods"] >= r["pods"] for m, r in zip(more, rows)) and sum(m["pods"] for m in more) > sum(r["pods"] for r in rows)
