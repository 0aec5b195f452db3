"""Embedding stage, pure part: the ``visual`` vector for image→image search.

The vector is EfficientNet-Lite0's 1280-d pooled features (the forward pass shared with the scene
stage), L2-normalised so that cosine similarity is a dot product (Qdrant ``Distance.COSINE``). The
features are post-ReLU6 and sparse, so unnormalised dot products are dominated by image contrast.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .backbones.efficientnet_lite0 import FEATURE_DIM, NAME, VERSION

MODEL = NAME                # model name carried in EmbeddingResult.model
MODEL_VERSION = VERSION
VECTOR_NAME = "visual"      # Qdrant named vector
DIM = FEATURE_DIM           # 1280
_EPS = 1e-12


def l2_normalise(v: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError("vector has non-finite values")
    n = float(np.linalg.norm(a))
    if n < _EPS:
        raise ValueError("cannot normalise a zero vector")
    return a / n


def visual_vector(features: Sequence[float] | np.ndarray) -> list[float]:
    """The L2-normalised 1280-d ``visual`` vector as a list of floats (Avro ``array<float>``)."""
    a = np.asarray(features).reshape(-1)
    if a.size != DIM:
        raise ValueError(f"expected {DIM} features, got {a.size}")
    return l2_normalise(a).astype(np.float32).tolist()


def cosine(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Cosine similarity of two vectors (normalised here, so raw features work too)."""
    x, y = l2_normalise(a), l2_normalise(b)
    if x.shape != y.shape:
        raise ValueError(f"dimension mismatch: {x.shape[0]} vs {y.shape[0]}")
    return float(np.clip(x @ y, -1.0, 1.0))
