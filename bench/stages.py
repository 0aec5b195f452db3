"""Benchmark of the model stages.

    .venv/bin/python bench/stages.py [--replicas 3] [--json out.json]

1. Per model, on the sample photos normalised exactly as preprocess does (long side 1600, EXIF
   applied): p50 ms/image of ``predict`` at batch 1 and at the configured batch size, and the floor
   the stage is compared with, a bare loop on the same inputs: for objects and visual the same
   input preparation + one ``session.run``; for text only its ONNX Runtime calls (gate, detector,
   recogniser per line) on the tensors ``predict`` fed them; for faces its input blob (the image
   scaled to YuNet's 640x640, as for objects) and its ONNX Runtime calls (YuNet on each blob,
   re-detections of tilted faces included, SFace per aligned chip; with LENSFLOW_FACES_MODEL=dlib
   its dlib calls); for
   safety its preprocessing + one ``session.run``.
2. End to end with every stage on: the sample photos submitted ``--replicas`` times (as different
   users, so they are different images) through the running stack and one worker; images/s,
   p50/p95 latency, per-stage p50 as the stages report it, and the worker's RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.spine import bench_env, bench_worker, cpu_seconds, rss_mib, run_pipeline, summarise  # noqa: E402

PHOTOS = ROOT / "samples" / "photos"
ALL = "objects,text,faces,scene,embedding,safety,describe"


def derivatives() -> list[Image.Image]:
    from lensflow.agents.preprocess import Limits, prepare

    limits = Limits(50 << 20, 100_000_000, 1600, 85, ["JPEG", "PNG", "WEBP", "TIFF"])
    out = []
    for p in sorted(PHOTOS.iterdir()):
        if p.suffix.lower() not in (".jpg", ".png", ".webp", ".tif"):
            continue
        data = p.read_bytes()
        o = prepare(data, limits)
        img = Image.open(io.BytesIO(o.derivative or data))
        if o.derivative is None:
            from PIL import ImageOps
            img = ImageOps.exif_transpose(img)
        out.append(img.convert("RGB"))
    return out


def photo_sized(path: Path, long_side: int, out_dir: Path) -> Path:
    """The sample as is when its long side (after EXIF orientation) reaches ``long_side``; else an upscaled
    JPEG copy with the same EXIF (orientation applied, so the tag is reset)."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(Image.open(path))
    if max(img.size) >= long_side:
        return path
    scale = long_side / max(img.size)
    big = img.convert("RGB").resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    exif = Image.open(path).getexif()
    exif[0x0112] = 1
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (path.stem + ".jpg")
    big.save(target, "JPEG", quality=90, exif=exif.tobytes())
    return target


def timed(fn, items, per: int = 1) -> list[float]:
    out = []
    for i in range(0, len(items), per):
        chunk = items[i:i + per]
        t0 = time.perf_counter()
        fn(chunk)
        out.append((time.perf_counter() - t0) * 1000 / len(chunk))
    return out


def worker_counters(port: int, name: str) -> dict[str, float]:
    """A counter of the worker's /metrics by its one label: ``lensflow_<name>_total{label="x"} v`` -> {x: v}."""
    import urllib.request

    from lensflow.streams.observability import counter_values

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return counter_values(text, f"lensflow_{name}")


def topic_timeline(env: dict, since_ms: int) -> dict[str, list[float]]:
    """Per topic of this run's namespace: when its records were produced (broker timestamps, seconds
    after ``since_ms``), to see how the stages overlap."""
    from confluent_kafka import Consumer, TopicPartition

    prefix = env["LENSFLOW_TOPIC_PREFIX"]
    consumer = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": f"bench-timeline-{time.time()}",
                         "enable.auto.commit": False})
    out: dict[str, list[float]] = {}
    try:
        topics = [t for t in consumer.list_topics(timeout=10).topics if t.startswith(prefix)]
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            starts = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in meta.partitions], timeout=10)
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}
            todo = sum(max(0, ends[tp.partition] - tp.offset) for tp in starts if tp.offset >= 0)
            if not todo:
                continue
            consumer.assign([tp for tp in starts if tp.offset >= 0])
            times: list[float] = []
            deadline = time.monotonic() + 30
            while len(times) < todo and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error():
                    times.append((msg.timestamp()[1] - since_ms) / 1000)
            consumer.unassign()
            out[topic[len(prefix):]] = sorted(times)
    finally:
        consumer.close()
    return out


class _Recorder:
    """Stands in for one of the OCR model's ONNX runners and records each tensor it is given."""

    def __init__(self, runner, log: list):
        self.runner, self.log = runner, log

    def __call__(self, x):
        self.log.append((self.runner, x))
        return self.runner(x)


def text_floor(model, images) -> Callable[[list], None]:
    """The OCR model's bare floor: only its ONNX Runtime calls (gate, detector, one per line for the
    recogniser), on the tensors a ``predict`` pass over ``images`` gave them, image by image."""
    originals = (model.gate.infer, model.detector.infer, model.recognizer.session)
    calls: dict[int, list] = {}
    try:
        for im in images:
            log: list = []
            model.gate.infer, model.detector.infer, model.recognizer.session = (_Recorder(r, log) for r in originals)
            model.predict([im])
            calls[id(im)] = log
    finally:
        model.gate.infer, model.detector.infer, model.recognizer.session = originals

    def run(imgs):
        for im in imgs:
            for runner, x in calls[id(im)]:
                runner(x)
    return run


class _SessionRecorder:
    """An ONNX Runtime session stand-in that records every ``run`` (outputs, feed) and forwards it."""

    def __init__(self, session, log: list):
        self.session, self.log = session, log

    def run(self, outputs, feed, *args, **kwargs):
        self.log.append((self.session, outputs, feed))
        return self.session.run(outputs, feed, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def sface_floor(model, images) -> Callable[[list], None]:
    """YuNet + SFace's bare floor: the same input preparation as objects' and safety's floors (the
    image scaled into YuNet's 640x640 blob, ``detection_input``) and its ONNX Runtime calls (YuNet on
    each blob ``predict`` fed it, including the re-detections of tilted faces, SFace on each aligned
    chip), replayed on the tensors a ``predict`` pass over ``images`` gave them, image by image. What
    it leaves out is the stage's own work around the model: decoding, alignment, refinement."""
    originals = (model._detector, model._encoder)
    calls: dict[int, list] = {}
    try:
        for im in images:
            log: list = []
            model._detector, model._encoder = (_SessionRecorder(x, log) for x in originals)
            model.predict([im])
            calls[id(im)] = log
    finally:
        model._detector, model._encoder = originals

    def run(imgs):
        for im in imgs:
            model.detection_input(im)
            for session, outputs, feed in calls[id(im)]:
                session.run(outputs, feed)
    return run


def faces_floor(model, images) -> Callable[[list], None]:
    """The faces model's bare floor: only its dlib calls (HOG detection on the prepared grayscale
    input, then landmarks and descriptor per face found), on the inputs ``predict`` gives them."""
    from lensflow.agents.face_models import ENCODING_PADDING, dlib_rect

    inputs = {}
    for im in images:
        small, _, _ = model.detection_input(im)
        inputs[id(im)] = (small, np.asarray(im), [dlib_rect(box) for box, _ in model.detect(im)])

    def run(imgs):
        for im in imgs:
            small, pixels, rects = inputs[id(im)]
            model._detector.run(small, model.upsample, 0.0)
            for rect in rects:
                model._encoder.compute_face_descriptor(pixels, model._landmarks(pixels, rect), 0, ENCODING_PADDING)
    return run


def models_report(batch: int) -> dict:
    from lensflow.agents import face_models as faces, objects, safety, text, textembed
    from lensflow.agents.backbones import efficientnet_lite0 as eff
    from lensflow.streams.models import ModelCache
    from lensflow.streams.settings import Settings

    cache = ModelCache(Settings().models_path)
    images = derivatives()
    figures = {}

    def floor_eff(imgs):
        m = models["visual"]
        for im in imgs:
            m.session.run(m._outputs, {"input": eff.preprocess(im)[None]})

    def floor_obj(imgs):
        m = models["objects"]
        for im in imgs:
            x, _ = objects.preprocess(im)
            m.session.run(m._outputs, {m._input: x})

    def floor_safety(imgs):
        m = models["safety"]
        for im in imgs:
            m.session.run(None, {m.input_name: safety.preprocess(im)[None]})

    st = Settings()
    models = {"objects": objects.ObjectDetector(cache, threshold=st.objects_min_score, iou_threshold=st.objects_nms_iou),
              "visual": eff.EfficientNetLite0(cache), "text": text.OcrModel(cache, det_max_side=st.text_det_max_side),
              "faces": faces.face_model(st, cache), "safety": safety.SafetyModel(cache)}
    floors = {"objects": floor_obj, "visual": floor_eff, "safety": floor_safety}
    for name, m in models.items():
        m.load()
        m.predict(images[:1])  # warm-up
        if name == "text":
            floors[name] = text_floor(m, images)
        elif name == "faces":
            floors[name] = sface_floor(m, images) if isinstance(m, faces.SFaceModel) else faces_floor(m, images)
        b1 = timed(m.predict, images, 1)
        bn = timed(m.predict, images, batch)
        # batch n is timed per batch (per image: the batch's mean), so batch 1's mean is given to compare
        row = {"batch1_p50_ms": statistics.median(b1), "batch1_mean_ms": statistics.mean(b1),
               f"batch{batch}_ms_per_image": statistics.median(bn)}
        if name in floors:
            floors[name](images[:1])
            fl = timed(floors[name], images, 1)
            row["bare_floor_p50_ms"] = statistics.median(fl)
            row["vs_floor"] = row["batch1_p50_ms"] / row["bare_floor_p50_ms"]
        figures[name] = row
        print(f"  {name:<8} batch 1 p50 {row['batch1_p50_ms']:7.1f} ms (mean {row['batch1_mean_ms']:5.1f})"
              f"   batch {batch} {row[f'batch{batch}_ms_per_image']:7.1f} ms/img (p50 of batch means)"
              f"   bare {'dlib' if isinstance(m, faces.FaceModel) else 'ORT '} {row['bare_floor_p50_ms']:6.1f} ms  ({row['vs_floor']:.2f}x)")
    emb = textembed.TextEmbedder(cache).load()
    sentences = [f"A photo of {n} cars and a person in a street, outdoors" for n in range(64)]
    b1 = timed(emb.predict, sentences, 1)
    bn = timed(emb.predict, sentences, 32)
    figures["minilm"] = {"batch1_p50_ms": statistics.median(b1), "batch32_ms_per_text": statistics.median(bn)}
    print(f"  minilm   batch 1 p50 {figures['minilm']['batch1_p50_ms']:7.1f} ms   batch 32 {figures['minilm']['batch32_ms_per_text']:7.1f} ms/text")
    return figures


def text_threads(env: dict) -> int:
    """The text stage's ONNX Runtime threads in the benchmark worker (its setting, else the default)."""
    from lensflow.streams.settings import Settings

    return int(env.get("LENSFLOW_TEXT_THREADS", Settings.model_fields["text_threads"].default))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--long-side", type=int, default=1600,
                    help="end to end: sample photos smaller than this are upscaled to it (JPEG, EXIF kept), so every "
                         "image is photo-sized for the models (0 = submit the samples as they are)")
    ap.add_argument("--skip-models", action="store_true", help="only the end-to-end part")
    ap.add_argument("--split", metavar="STAGES",
                    help="end to end: run these stages in a second worker process (its own consumer group), the rest "
                         "in the first, e.g. --split objects,scene,text,embedding,safety (two processes: no shared GIL)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a worker setting for the end-to-end part, e.g. --set model_threads=2 (repeatable)")
    args = ap.parse_args()
    from lensflow.streams.settings import Settings

    batch = Settings().model_batch_size
    figures = {}
    if not args.skip_models:
        print("== models on the sample photos (1 thread each)")
        figures["models"] = models_report(batch)

    work = Path(tempfile.mkdtemp(prefix="lensflow-bench-stages-"))
    env = bench_env("s", 6098, work, args.set)
    cli = [sys.executable, "-m", "lensflow.cli"]
    subprocess.run(cli + ["stack", "up"], env=env, check=True)
    subprocess.run(cli + ["models", "prepare"], env=env, check=True)
    files = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".png", ".webp", ".tif"))
    if args.long_side:
        files = [photo_sized(p, args.long_side, work / "photos") for p in files]
    import contextlib

    from lensflow.streams.topology import RUNNABLE

    with contextlib.ExitStack() as workers:
        if args.split:
            second = [x.strip() for x in args.split.split(",") if x.strip()]
            first = ",".join(x for x in RUNNABLE if x not in second)
            # the first worker owns the web port the counters are read from; the second is stopped first
            worker = workers.enter_context(bench_worker(env, 6098, work, stages=first))
            extra = workers.enter_context(bench_worker(env, 6097, work, stages=",".join(second), cleanup=False,
                                                       log="worker-split.log"))
        else:
            worker, extra = workers.enter_context(bench_worker(env, 6098, work)), None
        run_pipeline(env, files[:4], 300, user="warmup", stages=ALL)
        recs = []
        pids = {"worker": worker.pid, **({"split": extra.pid} if extra else {})}
        before = cpu_seconds(pids)
        ports = [6098] + ([6097] if extra else [])

        def counters(name):
            out: dict[str, float] = {}
            for port in ports:
                for k, v in worker_counters(port, name).items():
                    out[k] = out.get(k, 0.0) + v
            return out

        stage_cpu_before = counters("stage_cpu_seconds")
        t0 = time.perf_counter()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.replicas) as pool:  # the replicas are submitted at once, as different users
            for part in pool.map(lambda r: run_pipeline(env, files, 900, user=f"bench{r}", stages=ALL), range(args.replicas)):
                recs += part
        wall = time.perf_counter() - t0
        after = cpu_seconds(pids)
        decodes = counters("decoded_cache")
        stage_cpu = {k: (v - stage_cpu_before.get(k, 0.0)) * 1000 / len(recs)
                     for k, v in counters("stage_cpu_seconds").items()}
        e = figures["end_to_end"] = {
            **summarise(recs), "wall_s": wall,
            "worker_cpu_ms_per_image": sum(after[k] - before[k] for k in pids) * 1000 / len(recs),
            "worker_rss_mib": sum(rss_mib(pid) or 0.0 for pid in pids.values()), "processes": len(pids), "decoded_cache": decodes,
            "stage_cpu_ms_per_image": stage_cpu}
        print(f"\n== end to end, every stage on: {e['images']} images, status {e['statuses']}")
        print(f"  throughput {e['images_per_s']:.2f} images/s (first upload → last analyzed; uploads spread over "
              f"{e['uploads_span_s']:.1f} s; first image analyzed after {e['completed_at_s'][0]:.1f} s); "
              f"latency p50 {e['latency_p50_ms']:.0f} ms, p95 {e['latency_p95_ms']:.0f} ms")
        for k, v in e["stage_p50_ms"].items():
            print(f"  stage {k:<10} p50 {v:7.1f} ms")
        print(f"  worker CPU {e['worker_cpu_ms_per_image']:.0f} ms/image; RSS {e['worker_rss_mib']:.0f} MiB "
              f"({e['processes']} process{'es' if e['processes'] > 1 else ''}); "
              f"derivatives decoded {decodes.get('miss', 0):.0f} times, shared {decodes.get('hit', 0):.0f} times, "
              f"evicted unshared {decodes.get('evicted', 0):.0f} times (warm-up included)")
        since = int(min(r["uploaded_at"] for r in recs).timestamp() * 1000)
        timeline = e["topic_timeline_s"] = topic_timeline(env, since)
        print("  records produced, seconds after the first upload (first / median / last):")
        for topic, times in sorted(timeline.items(), key=lambda kv: statistics.median(kv[1])):
            print(f"    {topic:<24} {len(times):4d}  {times[0]:6.1f} {statistics.median(times):6.1f} {times[-1]:6.1f}")
        print("  CPU per image by stage, in its own thread: " + ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(
            stage_cpu.items(), key=lambda kv: -kv[1])) + f"; the rest (event loop: Kafka, Avro, join, stores"
              + (", and the text stage's extra ONNX Runtime threads" if text_threads(env) > 1 else "")
              + f") {e['worker_cpu_ms_per_image'] - sum(stage_cpu.values()):.0f} ms")
        from bench.capacity import capacity

        print("  capacity per stage group (bench/capacity.py; pods of 2 cores for 50 uploads/s):")
        for row in capacity(figures, 50.0, 2.0):
            print(f"    {row['group']:<11} {row['cpu_ms_per_image']:6.1f} ms CPU/image  {row['images_per_s_per_core']:6.2f} images/s "
                  f"per core  slowest stage p50 {row['stage_p50_ms']} ms  pods {row['pods']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
