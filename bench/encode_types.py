"""Encode cost of the generated record types (streams/avro_types.py) against plain dicts: N ObjectsResult
(5 detections each) and N ImageAnalyzed, encoded by the codec from dicts and from the types (``to_avro``
included), and ``to_avro`` alone: CPU time per record, best of 9 interleaved rounds.

    .venv/bin/python bench/encode_types.py [N]
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone

from lensflow.streams import avro_types as T
from lensflow.streams.codec import Codec

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def objects() -> T.ObjectsResult:
    return T.ObjectsResult(image_id="6f1b7a52-93a4-4c1c-9a43-6c1f0c6f3e11", user_id="alice", run_id="run:6f1b7a52",
                           stage="objects", model=T.ModelRef(name="human-models-centernet-coco80", version="3.0.4",
                                                             sha256="ab" * 32),
                           status=T.StageStatus.OK, duration_ms=41.5, produced_at=T0,
                           detections=[T.Detection(label="car", class_id=2, confidence=0.9 - i / 10,
                                                   box=T.Box(x1=10.0 * i, y1=20.0, x2=10.0 * i + 50, y2=80.0))
                                       for i in range(5)])


def analyzed() -> T.ImageAnalyzed:
    return T.ImageAnalyzed(image_id="6f1b7a52-93a4-4c1c-9a43-6c1f0c6f3e11", user_id="alice", run_id="run:6f1b7a52",
                           analysis_version=1, status=T.AnalysisStatus.COMPLETE,
                           stages=[T.StageSummary(stage=s, status=T.StageStatus.OK, duration_ms=10.0,
                                                  model=T.ModelRef(name=s, version="1")) for s in
                                   ("preprocess", "metadata", "objects", "scene", "text", "faces", "embedding", "describe")],
                           uri="file:///x.jpg", caption="a car on a road",
                           tags=[T.Tag(kind="object", tag=f"t{i}", score=0.5) for i in range(12)],
                           uploaded_at=T0, analyzed_at=T0, summary=T.AnalysisSummary(objects=5, text_lines=2))


def per_record_us(fn, items: list, rounds: int) -> float:
    """CPU µs per record of ``fn`` over ``items``, best of ``rounds`` (CPU time: other processes on a
    shared machine stretch wall time, not this)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for r in items:
            fn(r)
        best = min(best, time.process_time() - t0)
    return best / len(items) * 1e6


def main(before=None, rounds: int = 9) -> None:
    """``before``: a codec to time the dict path with too (e.g. the previous commit's)."""
    codec = Codec()
    for name, make in (("ObjectsResult", objects), ("ImageAnalyzed", analyzed)):
        typed = [make() for _ in range(N)]
        dicts = [r.to_avro() for r in typed]
        assert all(codec.encode(name, d) == codec.encode(name, r) for d, r in zip(dicts, typed))  # the same bytes
        paths = {"dicts": (lambda r: codec.encode(name, r), dicts), "types": (lambda r: codec.encode(name, r), typed),
                 "to_avro alone": (lambda r: r.to_avro(), typed)}
        if before is not None:
            paths["dicts, before"] = (lambda r: before.encode(name, r), dicts)
        got = {k: float("inf") for k in paths}
        for _ in range(rounds):  # interleaved, so that a busy moment does not favour one path
            for k, (fn, items) in paths.items():
                got[k] = min(got[k], per_record_us(fn, items, 1))
        print(f"{name} x{N}: " + ", ".join(f"{k} {v:.2f} µs ({v * N / 1000:.0f} ms)" for k, v in got.items())
              + f"; types over dicts {(got['types'] - got['dicts']) / got['dicts'] * 100:+.1f} %")


if __name__ == "__main__":
    main()
