"""captioner: a generative image captioner run from a local directory of ONNX files — the backend of
the describe stage selected by ``LENSFLOW_CAPTIONER=onnx:/path/to/dir``. The Faust wiring lives in
``describe``.

The directory is what Hugging Face Optimum writes for an image-to-text encoder-decoder (for example
``optimum-cli export onnx --model <a VisionEncoderDecoder model> --task image-to-text DIR``), of
which this runner reads:

* ``encoder_model.onnx``: ``pixel_values`` [B, 3, H, W] float32 → first output, the encoder's hidden
  states [B, S, D];
* ``decoder_model.onnx``: ``input_ids`` [B, T] int64 and ``encoder_hidden_states`` [B, S, D] (and
  ``encoder_attention_mask`` [B, S] when it takes one) → first output, logits [B, T, V];
* ``tokenizer.json`` (Hugging Face ``tokenizers``), decoded with special tokens skipped;
* ``preprocessor_config.json``: ``size`` ({height, width}, an int, or {shortest_edge} with
  ``crop_size``), ``resample`` (PIL's codes), ``do_rescale``/``rescale_factor``,
  ``do_normalize``/``image_mean``/``image_std``;
* ``generation_config.json`` and/or ``config.json``: ``decoder_start_token_id`` (else
  ``bos_token_id``), ``eos_token_id`` (an id or a list), ``pad_token_id``, ``max_length``.

Decoding is greedy and without a KV cache (``decoder_with_past_model.onnx`` is not used): the decoder
re-reads the prefix at each step, which is affordable for captions of a few dozen tokens. The model
ref is the directory's name, the runner's version and the SHA-256 over the files above, so a result
names exactly the weights that wrote it.

Not verified on a real exported model: no captioning weights are reachable from the registries this
project can use. The tests run this runner on a small deterministic encoder-decoder built with
``onnx.helper`` in the same layout, through the real describe stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lensflow.streams.models import Model, ModelError, ort_session, sha256_file

ENCODER = "encoder_model.onnx"
DECODER = "decoder_model.onnx"
TOKENIZER = "tokenizer.json"
PREPROCESSOR = "preprocessor_config.json"
REQUIRED = (ENCODER, DECODER, TOKENIZER, PREPROCESSOR)
CONFIGS = ("generation_config.json", "config.json")  # the first that defines a key wins
DEFAULT_MAX_LENGTH = 20


def check_directory(directory: Path) -> None:
    """A configuration error naming what is missing, before any agent starts."""
    if not directory.is_dir():
        raise ModelError(f"LENSFLOW_CAPTIONER names {directory}, which is not a directory")
    missing = [f for f in REQUIRED if not (directory / f).is_file()]
    if missing:
        raise ModelError(f"captioner directory {directory} lacks {', '.join(missing)} "
                         "(expected an ONNX image-to-text export: encoder_model.onnx, decoder_model.onnx, "
                         "tokenizer.json, preprocessor_config.json)")
    if not any((directory / c).is_file() for c in CONFIGS):
        raise ModelError(f"captioner directory {directory} has neither {CONFIGS[0]} nor {CONFIGS[1]}")


def _config(directory: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in reversed(CONFIGS):  # generation_config.json overrides config.json
        path = directory / name
        if path.is_file():
            data = json.loads(path.read_text())
            merged.update({k: v for k, v in data.items() if v is not None})
            merged.update({k: v for k, v in (data.get("decoder") or {}).items()
                           if k.endswith("token_id") and v is not None and k not in merged})
    return merged


def preprocess(image, cfg: dict[str, Any]) -> np.ndarray:
    """A PIL image → [3, H, W] float32 as the model's image processor describes it."""
    from PIL import Image

    image = image.convert("RGB") if image.mode != "RGB" else image
    resample = Image.Resampling(int(cfg.get("resample", Image.Resampling.BILINEAR)))
    size = cfg.get("size", 224)
    if cfg.get("do_resize", True):
        if isinstance(size, int):
            image = image.resize((size, size), resample)
        elif "height" in size and "width" in size:
            image = image.resize((int(size["width"]), int(size["height"])), resample)
        elif "shortest_edge" in size:
            edge = int(size["shortest_edge"])
            scale = edge / min(image.size)
            image = image.resize((max(edge, round(image.width * scale)), max(edge, round(image.height * scale))), resample)
        else:
            raise ModelError(f"unsupported preprocessor size {size!r}")
    crop = cfg.get("crop_size")
    if cfg.get("do_center_crop") and crop:
        ch, cw = (crop, crop) if isinstance(crop, int) else (int(crop["height"]), int(crop["width"]))
        left, top = (image.width - cw) // 2, (image.height - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
    x = np.asarray(image, dtype=np.float32)
    if cfg.get("do_rescale", True):
        x = x * np.float32(cfg.get("rescale_factor", 1 / 255))
    if cfg.get("do_normalize", True):
        mean = np.asarray(cfg.get("image_mean", [0.5, 0.5, 0.5]), dtype=np.float32)
        std = np.asarray(cfg.get("image_std", [0.5, 0.5, 0.5]), dtype=np.float32)
        x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def finish(text: str) -> str:
    """Whitespace normalised, first letter capitalised, a full stop unless it ends with punctuation."""
    text = " ".join(text.split())
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


class OnnxCaptioner(Model):
    """``predict([PIL image, …])`` → one caption per image (greedy decoding)."""

    name = "onnx-captioner"
    version = "1"

    def __init__(self, directory: Path, threads: int = 1, allow_gpu: bool = True):
        super().__init__(cache=None, threads=threads, allow_gpu=allow_gpu)  # type: ignore[arg-type]
        self.directory = Path(directory).expanduser()
        self.name = f"onnx-captioner:{self.directory.name}"

    def _resolve(self) -> tuple[dict[str, Path], list[str]]:
        check_directory(self.directory)
        files = [f for f in REQUIRED + CONFIGS if (self.directory / f).is_file()]
        return {f: self.directory / f for f in files}, [sha256_file(self.directory / f) for f in files]

    def _load(self, paths: dict[str, Path]) -> None:
        from tokenizers import Tokenizer

        self.encoder = ort_session(paths[ENCODER], threads=self.threads, allow_gpu=self.allow_gpu)
        self.decoder = ort_session(paths[DECODER], threads=self.threads, allow_gpu=self.allow_gpu)
        self.tokenizer = Tokenizer.from_file(str(paths[TOKENIZER]))
        self.image_cfg = json.loads(paths[PREPROCESSOR].read_text())
        cfg = _config(self.directory)
        start = cfg.get("decoder_start_token_id", cfg.get("bos_token_id"))
        eos = cfg.get("eos_token_id")
        if start is None or eos is None:
            raise ModelError(f"captioner {self.directory}: no decoder_start_token_id/bos_token_id or eos_token_id "
                             "in generation_config.json or config.json")
        self.start = int(start)
        self.eos = {int(e) for e in (eos if isinstance(eos, list) else [eos])}
        self.pad = int(cfg.get("pad_token_id", min(self.eos)))
        self.max_length = int(cfg.get("max_length", DEFAULT_MAX_LENGTH))
        self._enc_input = self.encoder.get_inputs()[0].name
        self._dec_inputs = {i.name for i in self.decoder.get_inputs()}
        for needed in ("input_ids", "encoder_hidden_states"):
            if needed not in self._dec_inputs:
                raise ModelError(f"captioner {self.directory}: {DECODER} has no input {needed!r} "
                                 f"(it takes {sorted(self._dec_inputs)})")

    def _predict(self, batch: list[Any]) -> list[str]:
        if not batch:
            return []
        pixels = np.stack([preprocess(im, self.image_cfg) for im in batch])
        hidden = self.encoder.run(None, {self._enc_input: pixels})[0]
        n = len(batch)
        ids = np.full((n, 1), self.start, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        feeds: dict[str, np.ndarray] = {"encoder_hidden_states": hidden}
        if "encoder_attention_mask" in self._dec_inputs:
            feeds["encoder_attention_mask"] = np.ones(hidden.shape[:2], dtype=np.int64)
        for _ in range(self.max_length - 1):
            logits = self.decoder.run(None, {**feeds, "input_ids": ids})[0]
            nxt = np.where(done, self.pad, logits[:, -1, :].argmax(-1)).astype(np.int64)
            ids = np.concatenate([ids, nxt[:, None]], axis=1)
            done |= np.isin(nxt, list(self.eos))
            if done.all():
                break
        out = []
        for row in ids[:, 1:].tolist():
            cut = next((i for i, t in enumerate(row) if t in self.eos), len(row))
            out.append(finish(self.tokenizer.decode(row[:cut], skip_special_tokens=True)))
        return out

    def warmup(self, sample: Any = None) -> None:
        from PIL import Image

        self.predict([sample if sample is not None else Image.new("RGB", (320, 240), (127, 127, 127))])

