"""Capacity per stage group, from a `bench/stages.py` result: CPU per image of each group's stages
(measured in the stages' own threads), the images/s one core sustains, and the pods a group needs for
an upload rate.

    .venv/bin/python bench/capacity.py bench/results-stages-session3.json [--rate 50] [--cores 2] [--markdown]

The event loop's share (Kafka, Avro, the join's table and stores) is spread over the groups by their
number of stages, so the columns add up to the worker's measured CPU per image. A pod's cores are
taken as 85 % usable (the rest is the loop's own waiting and GC). Per-stage p50 latencies are the
stages' batch times; a pod holds a group's models once, however many cores it gets.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: pixel agents measure CPU under their agent's name: visual = scene + embedding
AGENT = {"scene": "visual", "embedding": "visual"}
USABLE = 0.85


def capacity(result: dict, rate: float, cores: float) -> list[dict]:
    from lensflow.streams.topology import GROUPS

    e = result["end_to_end"]
    cpu = e["stage_cpu_ms_per_image"]
    loop_ms = max(0.0, e["worker_cpu_ms_per_image"] - sum(cpu.values()))
    n_stages = sum(len(members) for members in GROUPS.values())
    rows = []
    for name, members in GROUPS.items():
        agents = {AGENT.get(s, s) for s in members} - {"join"}
        ms = sum(cpu.get(a, 0.0) for a in agents) + loop_ms * len(members) / n_stages
        per_core = 1000.0 / ms
        p50 = max((e["stage_p50_ms"].get(s, 0.0) for s in members), default=0.0)
        rows.append({"group": name, "stages": ", ".join(members), "cpu_ms_per_image": round(ms, 1),
                     "images_per_s_per_core": round(per_core, 2), "stage_p50_ms": round(p50),
                     "pods": math.ceil(rate / (per_core * cores * USABLE))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path)
    ap.add_argument("--rate", type=float, default=50.0, help="uploads per second to plan for")
    ap.add_argument("--cores", type=float, default=2.0, help="CPU cores per pod")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows = capacity(json.loads(args.result.read_text()), args.rate, args.cores)
    header = ["group", "stages", "CPU ms/image", "images/s per core", "slowest stage p50 ms",
              f"pods of {args.cores:g} cores for {args.rate:g} uploads/s"]
    keys = ["group", "stages", "cpu_ms_per_image", "images_per_s_per_core", "stage_p50_ms", "pods"]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("| " + " | ".join("---" for _ in header) + " |")
        for r in rows:
            print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    else:
        for r in rows:
            print("  ".join(f"{h}: {r[k]}" for h, k in zip(header, keys)))


if __name__ == "__main__":
    main()
