"""Face geometry for the face models: dlib's rectangles, and the similarity transform that aligns a
face's landmarks onto SFace's template (as OpenCV's ``FaceRecognizerSF.alignCrop``)."""

from __future__ import annotations

import numpy as np


def dlib_rect(box: tuple[float, float, float, float]):
    """(x1, y1, x2, y2), right/bottom exclusive -> dlib.rectangle (inclusive)."""
    import dlib

    x1, y1, x2, y2 = box
    return dlib.rectangle(int(round(x1)), int(round(y1)), int(round(x2)) - 1, int(round(y2)) - 1)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) taking points ``src`` onto ``dst`` in
    the least-squares sense (Umeyama), as OpenCV's ``FaceRecognizerSF.alignCrop`` computes it."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    rot = u @ np.diag(d) @ vt
    scale = float((sv * d).sum() / ((s0 ** 2).sum() / len(src)))
    out = np.zeros((2, 3))
    out[:, :2] = scale * rot
    out[:, 2] = mu_d - scale * rot @ mu_s
    return out
