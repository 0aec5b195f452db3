"""A small deterministic image-to-text model in the layout of an Optimum ONNX export, for testing the
generative captioner backend (``agents/captioner.py``) where no real captioning weights are reachable.

Greedy decoding gives "a bright photo" for a light image and "a dark night picture" for a dark one:
the decoder's logits are a fixed token-to-token transition table plus the encoder's output (the
image's mean brightness, normalised to -1..1) times a vector that favours "bright" or "dark" after
"a" — so the caption depends on the pixels through the encoder, and the two captions differ in
length (a batch finishes its rows at different steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "a": 3, "photo": 4, "bright": 5, "dark": 6, "night": 7, "picture": 8}
BRIGHT, DARK = "A bright photo.", "A dark night picture."


def build(directory: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    v = len(VOCAB)
    table = np.zeros((v, v), dtype=np.float32)
    for a, b, score in [("[BOS]", "a", 20), ("a", "bright", 10), ("a", "dark", 10), ("bright", "photo", 20),
                        ("photo", "[EOS]", 20), ("dark", "night", 20), ("night", "picture", 20),
                        ("picture", "[EOS]", 20), ("[EOS]", "[EOS]", 20), ("[PAD]", "[PAD]", 20)]:
        table[VOCAB[a], VOCAB[b]] = score
    favour = np.zeros((1, v), dtype=np.float32)
    favour[0, VOCAB["bright"]], favour[0, VOCAB["dark"]] = 5.0, -5.0

    encoder = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixel_values"], ["mean"], axes=[1, 2, 3], keepdims=1),
         helper.make_node("Reshape", ["mean", "shape"], ["last_hidden_state"])],
        "encoder",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", 1, 1])],
        [numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "shape")])
    decoder = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["scores"]),
         helper.make_node("MatMul", ["encoder_hidden_states", "favour"], ["bias"]),
         helper.make_node("Add", ["scores", "bias"], ["logits"])],
        "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", "encoded", 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", v])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(favour, "favour")])
    for graph, name in ((encoder, "encoder_model.onnx"), (decoder, "decoder_model.onnx")):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(model)
        onnx.save(model, str(directory / name))

    tokenizer = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[PAD]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["[PAD]", "[BOS]", "[EOS]"])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    (directory / "generation_config.json").write_text(json.dumps({
        "decoder_start_token_id": VOCAB["[BOS]"], "eos_token_id": VOCAB["[EOS]"], "pad_token_id": VOCAB["[PAD]"], "max_length": 12}))
    (directory / "config.json").write_text(json.dumps({"model_type": "vision-encoder-decoder"}))
    return directory
