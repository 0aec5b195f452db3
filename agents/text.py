"""text: OCR with PP-OCRv4 (detector + Chinese/English recogniser) as shipped in rapidocr-onnxruntime 1.4.4.

The pure part of the text stage: ``OcrModel.predict(batch of PIL RGB images)`` returns the TextResult
fields ``text``, ``language`` and ``lines`` (boxes in pixels of the image given; the caller scales them
to the original). The Faust wiring lives elsewhere.

Per image (bench/RESULTS.md has the measurements behind each step):

1. **Gate**: detection only, long side capped at ``GATE_MAX_SIDE``. No box: empty result, nothing else
   runs (a photo without text costs only this).
2. **Detection** at long side ≤ ``DET_MAX_SIDE`` (rapidocr 1.4.4 ignores its own cap with
   ``limit_type="max"``, so the detector's resize step is overridden here, see ``_CappedResize``).
   Images smaller than the gate size are upscaled to it (a 300x400 photo's banner word is found then), and
   reuse the gate's boxes (found with the gate's lower box threshold).
3. **Recognition** of each box cropped from the image given, one line per ONNX call: batching pads every
   line to the widest one in the batch, and the padded lines lose their spaces ("Region-basedsegmentation");
   one line per call is also faster here (no padding to compute). Lines lower than the recogniser's 48 px
   input are upscaled 2x (bicubic) in the crop, which keeps more of their spaces (see ``upscale_factor``).
4. ``clean_text``: junk and low-confidence lines dropped, stray CJK dropped for Latin-script languages,
   whitespace normalised, reading order.
5. ``language``: py3langid (ships its model; ~0.4 s to load, < 1 ms a call) when the text has enough
   letters and the guess is confident, else None.

The angle classifier of rapidocr is not used (upside-down text is rare in photos; it costs a model call
per line batch). The weights ship inside the rapidocr package: ``lensflow models prepare`` copies the two
bundled .onnx files into the model cache, checking them against the checksums pinned below, and records
them in the manifest; ``load()`` verifies the copies like any other model file and opens those, so what
runs is what was checked (a pip reinstall cannot change it underneath) and ``sha256`` in the model ref is
the base class's digest of the two files' checksums.

ONNX Runtime sessions come from ``ort_session`` (intra-op threads = ``Model.threads``, 1 by default;
inter-op 1). One ``predict`` at a time per instance (the detector objects keep per-call state).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np
from PIL import Image
from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

from lensflow.streams.models import Model, ModelCache, copy_pinned, ort_session, package_dir, preparer

# --- configuration ----------------------------------------------------------------------------------
DET_MAX_SIDE = 960        # detection input, long side (px)
GATE_MAX_SIDE = 480       # text gate input, long side (px)
GATE_BOX_THRESH = 0.3     # the gate keeps weaker boxes than the detector (0.5): at 480 px it then still fires
                          # on 16-24 px text in a 1600 px photo, and fired on no more of the sample photos
LANGUAGES = ["en"]        # expected languages (ISO 639-1); CJK is kept only if one of them is zh/ja/ko
MIN_CONFIDENCE = 0.6      # lines recognised below this are dropped
SMALL_LINE_PX = 48        # lines lower than this (the recogniser's input height) are upscaled 2x ...
TINY_LINE_PX = 16         # ... unless lower than this (no gain there, and blurry tiny text got worse)
MAX_LINES = 64            # most boxes recognised per image (largest first); bounds the cost of a page
LANGUAGE_MIN_LETTERS = 8  # fewer letters than this: language None
LANGUAGE_MIN_PROB = 0.6   # py3langid probability (over LANGUAGE_CANDIDATES) below this: language None
#: what the recogniser can read (Latin script, Chinese/Japanese): py3langid picks among these only; over
#: its 140 labels short English signs scored 0.2-0.5, over these 0.5-0.98 (German/French/Italian alike)
LANGUAGE_CANDIDATES = ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs", "sk", "hu",
                       "ro", "hr", "sl", "tr", "id", "ms", "vi", "ca", "et", "lv", "lt", "ga", "is", "zh", "ja")

CJK_LANGUAGES = frozenset({"zh", "ja", "ko"})

# --- weights ----------------------------------------------------------------------------------------
RAPIDOCR_VERSION = "1.4.4"
#: bundled file -> SHA-256 of the files in rapidocr-onnxruntime 1.4.4 (the versions this module was tuned on)
BUNDLED = {
    "ch_PP-OCRv4_det_infer.onnx": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    "ch_PP-OCRv4_rec_infer.onnx": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
}
DET_FILE = f"rapidocr-{RAPIDOCR_VERSION}-ch_PP-OCRv4_det_infer.onnx"
REC_FILE = f"rapidocr-{RAPIDOCR_VERSION}-ch_PP-OCRv4_rec_infer.onnx"
_CACHE_NAMES = {"ch_PP-OCRv4_det_infer.onnx": DET_FILE, "ch_PP-OCRv4_rec_infer.onnx": REC_FILE}


def _package_models_dir() -> Path:
    return package_dir("rapidocr-onnxruntime", RAPIDOCR_VERSION, "rapidocr_onnxruntime", "models")


@preparer("rapidocr")
def prepare_rapidocr(cache: ModelCache, progress: Callable[[str], None], force: bool = False) -> None:
    """Copy the detector and recogniser bundled in rapidocr-onnxruntime into the model cache (idempotent;
    ``force`` copies again)."""
    src_dir = _package_models_dir()
    for bundled, expected in BUNDLED.items():
        copy_pinned(cache, src_dir / bundled, _CACHE_NAMES[bundled], expected, OcrModel.version,
                    f"pypi:rapidocr-onnxruntime=={RAPIDOCR_VERSION}:rapidocr_onnxruntime/models/{bundled}", progress, force)


# --- rapidocr pieces, fed our own ONNX Runtime sessions ----------------------------------------------
class _Runner:
    """The call interface rapidocr's detector/recogniser expect, over a session from ``ort_session``."""

    def __init__(self, session):
        self.session = session
        self.input = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: x})


class _CappedResize(DetPreProcess):
    """rapidocr's detector resize with the cap honoured: long side ≤ ``limit_side_len``; images with a long
    side under ``GATE_MAX_SIDE`` are upscaled to it (small text in small images is found then); both sides
    rounded to multiples of 32 (the network's stride); area interpolation when shrinking. Normalised by
    OpenCV in one pass (rapidocr's numpy normalisation goes through float64: 7.6 ms against 1 ms at 736 px,
    equal to 1e-7)."""

    def __call__(self, img: np.ndarray) -> np.ndarray | None:
        resized = self.resize(img)
        if resized is None:
            return None
        # (x / 255 - mean) / std == (x - 255 mean) / (255 std); one std for the three channels (PP-OCR: 0.5)
        return cv2.dnn.blobFromImage(resized, scalefactor=1 / (255 * float(self.std[0])),
                                     mean=tuple(255 * float(m) for m in self.mean))

    def resize(self, img: np.ndarray) -> np.ndarray | None:
        h, w = img.shape[:2]
        ratio = detection_side(max(h, w), self.limit_side_len) / max(h, w)
        rh = max(32, int(round(h * ratio / 32)) * 32)
        rw = max(32, int(round(w * ratio / 32)) * 32)
        if (rh, rw) == (h, w):
            return img
        shrink = rh * rw < h * w
        return cv2.resize(img, (rw, rh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def detection_side(long_side: int, cap: int) -> int:
    """Long side of the detector's input for an image of ``long_side`` px under ``cap``."""
    return min(cap, max(long_side, GATE_MAX_SIDE))


class CappedTextDetector(TextDetector):
    """PP-OCR DB text detector whose input long side is capped at ``max_side``.

    ``TextDetector.__init__`` is not called: it would open its own session with the package's thread
    settings. Returns ``(boxes [N, 4, 2] in the pixels of the image given, seconds)``.
    """

    def __init__(self, session, max_side: int, box_thresh: float = 0.5):
        self.limit_side_len = max_side
        self.limit_type = "max"
        self.mean = [0.5, 0.5, 0.5]
        self.std = [0.5, 0.5, 0.5]
        self.preprocess_op = None
        self.postprocess_op = DBPostProcess(thresh=0.3, box_thresh=box_thresh, max_candidates=1000,
                                            unclip_ratio=1.6, use_dilation=True, score_mode="fast")
        self.infer = _Runner(session)

    def get_preprocess(self, max_wh: int) -> DetPreProcess:  # the overridden resize and normalisation
        return _CappedResize(self.limit_side_len, self.limit_type, self.mean, self.std)


class LineRecognizer(TextRecognizer):
    """PP-OCRv4 CTC recogniser, one line per call (``rec_batch_num = 1``, see the module docstring)."""

    def __init__(self, session):
        self.session = _Runner(session)
        characters = session.get_modelmeta().custom_metadata_map["character"].splitlines()
        self.postprocess_op = CTCLabelDecode(character=characters)
        self.rec_batch_num = 1
        self.rec_image_shape = [3, 48, 320]


def upscale_factor(text_height: float) -> int:
    """2x (bicubic) for lines lower than the recogniser's 48 px input: it then resizes them bilinearly,
    and soft small text loses its spaces. On 540 rendered English lines (4 fonts, 6-40 px, JPEG q70, half
    blurred) 2x took exact word sequences from 202 to 286 right; 3x was no better (283), and below 16 px
    neither helped (3x hurt)."""
    return 2 if TINY_LINE_PX <= text_height < SMALL_LINE_PX else 1


def crop_line(img: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Perspective crop of one detected quadrilateral (tl, tr, br, bl), upscaled when small."""
    quad = quad.astype(np.float32)
    w = max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3]))
    h = max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2]))
    f = upscale_factor(min(w, h))
    cw, ch = max(1, int(w * f)), max(1, int(h * f))
    dst = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(quad, dst)
    crop = cv2.warpPerspective(img, m, (cw, ch), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if ch / cw >= 1.5:  # vertical text
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


# --- cleaning ---------------------------------------------------------------------------------------
_CJK = re.compile(
    "[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3200-\u4dbf\u4e00-\u9fff\ua960-\ua97f"
    "\uac00-\ud7ff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f]")
_WS = re.compile(r"\s+")
_LOST_SPACE = re.compile(r"(?<=[a-z][.,;:!?])(?=[A-Z][a-z])")  # "background.These" -> "background. These"


def _keep_cjk(languages: Iterable[str]) -> bool:
    return any(lang.split("-")[0].lower() in CJK_LANGUAGES for lang in languages)


def clean_line(text: str, keep_cjk: bool = False) -> str:
    """One line's text: NFKC, stray CJK removed (unless kept), whitespace normalised, lost spaces
    after sentence punctuation restored; '' when nothing readable (no letter or digit) is left."""
    text = unicodedata.normalize("NFKC", text)
    if not keep_cjk:
        text = _CJK.sub(" ", text)
    text = _WS.sub(" ", text).strip()
    text = _LOST_SPACE.sub(" ", text)
    if not any(ch.isalnum() for ch in text):
        return ""
    return text


def _reading_order(lines: list[dict]) -> list[list[dict]]:
    """Rows top-to-bottom (boxes overlapping vertically by half the smaller height share a row), each
    row left-to-right."""
    rows: list[tuple[float, float, list[dict]]] = []  # (top, bottom, lines)
    for line in sorted(lines, key=lambda ln: (ln["box"]["y1"] + ln["box"]["y2"]) / 2):
        b = line["box"]
        h = max(b["y2"] - b["y1"], 1.0)
        if rows:
            top, bottom, members = rows[-1]
            overlap = min(bottom, b["y2"]) - max(top, b["y1"])
            if overlap >= 0.5 * min(h, max(bottom - top, 1.0)):
                members.append(line)
                rows[-1] = (min(top, b["y1"]), max(bottom, b["y2"]), members)
                continue
        rows.append((b["y1"], b["y2"], [line]))
    rows.sort(key=lambda r: r[0])
    return [sorted(members, key=lambda ln: ln["box"]["x1"]) for _, _, members in rows]


def clean_text(lines: list[dict], languages: Iterable[str] = LANGUAGES,
               min_confidence: float = MIN_CONFIDENCE) -> tuple[str, list[dict]]:
    """Recognised lines ({text, confidence, box{x1,y1,x2,y2}}) -> (full text, kept lines in reading order).

    Drops lines below ``min_confidence`` and lines with nothing readable; removes CJK characters when no
    configured language is Chinese/Japanese/Korean (the recogniser turns texture into stray CJK);
    normalises whitespace. Lines of one row are joined by a space, rows by a newline.
    """
    keep_cjk = _keep_cjk(languages)
    kept = []
    for line in lines:
        if float(line["confidence"]) < min_confidence:
            continue
        text = clean_line(line["text"], keep_cjk)
        if text:
            kept.append({**line, "text": text})
    rows = _reading_order(kept)
    text = "\n".join(" ".join(ln["text"] for ln in row) for row in rows)
    return text, [ln for row in rows for ln in row]


def guess_language(text: str, identifier: Any) -> str | None:
    """ISO 639-1 code from py3langid, or None when the text is short or the guess unsure."""
    if identifier is None or sum(ch.isalpha() for ch in text) < LANGUAGE_MIN_LETTERS:
        return None
    lang, prob = identifier.classify(text)
    return lang if prob >= LANGUAGE_MIN_PROB else None


def empty_result() -> dict:
    return {"text": "", "language": None, "lines": []}


def _bgr(img: Image.Image) -> np.ndarray:
    if img.mode != "RGB":
        img = img.convert("RGB")
    return cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)  # the PP-OCR models take BGR (half the time of a numpy flip + copy)


# --- the runner -------------------------------------------------------------------------------------
class OcrModel(Model):
    name = "pp-ocrv4-rapidocr"
    version = "1.4.4-1"
    files = (DET_FILE, REC_FILE)

    def __init__(self, cache: ModelCache, threads: int = 1, allow_gpu: bool = True,
                 languages: Iterable[str] | None = None, det_max_side: int = DET_MAX_SIDE):
        super().__init__(cache, threads=threads, allow_gpu=allow_gpu)
        self.det_max_side = det_max_side
        self.languages = list(languages if languages is not None else LANGUAGES)
        self.stats = {"gated": 0, "read": 0}

    def _load(self, paths: dict[str, Path]) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        det = ort_session(paths[DET_FILE], threads=self.threads, allow_gpu=self.allow_gpu)
        rec = ort_session(paths[REC_FILE], threads=self.threads, allow_gpu=self.allow_gpu)
        self.gate = CappedTextDetector(det, GATE_MAX_SIDE, box_thresh=GATE_BOX_THRESH)
        self.detector = CappedTextDetector(det, self.det_max_side)
        self.recognizer = LineRecognizer(rec)
        self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.identifier.set_languages(LANGUAGE_CANDIDATES)

    def _predict(self, batch: list[Image.Image]) -> list[dict]:
        return [self.read(img) for img in batch]

    def has_text(self, img: np.ndarray) -> np.ndarray:
        """The gate: boxes found at ``GATE_MAX_SIDE`` (in the pixels of ``img``)."""
        boxes, _ = self.gate(img)
        return boxes

    def read(self, image: Image.Image) -> dict:
        img = _bgr(image)
        boxes = self.has_text(img)
        if len(boxes) == 0:
            self.stats["gated"] += 1
            return empty_result()
        self.stats["read"] += 1
        long_side = max(img.shape[:2])
        if detection_side(long_side, self.det_max_side) != detection_side(long_side, GATE_MAX_SIDE):
            boxes, _ = self.detector(img)
            if len(boxes) == 0:
                return empty_result()
        if len(boxes) > MAX_LINES:
            areas = [cv2.contourArea(b.astype(np.float32)) for b in boxes]
            boxes = [boxes[i] for i in np.argsort(areas)[::-1][:MAX_LINES]]
        crops = [crop_line(img, b) for b in boxes]
        recognised, _ = self.recognizer(crops)
        lines = []
        for quad, (text, score) in zip(boxes, recognised):
            xs, ys = quad[:, 0], quad[:, 1]
            box = {"x1": float(xs.min()), "y1": float(ys.min()), "x2": float(xs.max()), "y2": float(ys.max())}
            lines.append({"text": text, "confidence": float(score), "box": box})
        text, lines = clean_text(lines, self.languages)
        return {"text": text, "language": guess_language(text, self.identifier), "lines": lines}


def warmup_image() -> Image.Image:
    """A photo-sized image with a line of text: warms up the gate, the detector and the recogniser."""
    from PIL import ImageDraw, ImageFont

    img = Image.new("RGB", (1024, 768), (235, 235, 230))
    draw = ImageDraw.Draw(img)
    draw.text((80, 360), "lensflow warm up 0123", fill=(20, 20, 20), font=ImageFont.load_default(size=48))
    return img


# -- the stage ---------------------------------------------------------------------------------

def register(ctx, stages: list[str] | None = None) -> None:
    """The text agent: OCR on the derivatives (gate first), line boxes mapped to original pixels."""
    from lensflow.streams.pixel import pixel_stage, scale_box

    cache = ModelCache(ctx.settings.cache_path / "models")

    def fields(read: dict, info: dict) -> dict:
        return {"text": read["text"], "language": read["language"],
                "lines": [{"text": ln["text"], "confidence": float(ln["confidence"]), "box": scale_box(ln["box"], info["scale"])}
                          for ln in read["lines"]]}

    pixel_stage(ctx, "text", lambda: OcrModel(cache, threads=ctx.settings.model_threads, allow_gpu=ctx.settings.model_gpu,
                                              det_max_side=ctx.settings.text_det_max_side),
                {"text": fields}, warmup=warmup_image)
