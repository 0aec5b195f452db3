"""The generative captioner runner (agents/captioner.py) on a small deterministic model in the layout
of an Optimum ONNX export (tests/captioner_model.py)."""

import json

import numpy as np
import pytest
from PIL import Image

from lensflow.agents.captioner import OnnxCaptioner, check_directory, finish, preprocess
from lensflow.streams.models import ModelError
from tests.captioner_model import BRIGHT, DARK, build

LIGHT = Image.new("RGB", (300, 200), (240, 235, 230))
NIGHT = Image.new("RGB", (64, 96), (10, 12, 30))


@pytest.fixture
def model_dir(tmp_path):
    return build(tmp_path / "captioner")


def test_captions_follow_the_pixels_and_rows_finish_apart(model_dir):
    m = OnnxCaptioner(model_dir).load()
    assert m.predict([LIGHT]) == [BRIGHT]
    assert m.predict([NIGHT, LIGHT, Image.new("L", (50, 80), 220)]) == [DARK, BRIGHT, BRIGHT]
    assert m.ref["name"] == "onnx-captioner:captioner" and len(m.ref["sha256"]) == 64


def test_max_length_cuts_the_caption(model_dir):
    cfg = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**cfg, "max_length": 3}))
    assert OnnxCaptioner(model_dir).load().predict([NIGHT]) == ["A dark."]  # max_length counts the start token, as in transformers


def test_the_ref_names_the_exact_files(model_dir):
    before = OnnxCaptioner(model_dir).load().ref["sha256"]
    cfg = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**cfg, "max_length": 10}))
    assert OnnxCaptioner(model_dir).load().ref["sha256"] != before


def test_configuration_errors_name_what_is_missing(tmp_path, model_dir):
    with pytest.raises(ModelError, match="not a directory"):
        check_directory(tmp_path / "nope")
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="lacks tokenizer.json"):
        OnnxCaptioner(model_dir).load()
    bare = build(tmp_path / "bare")
    (bare / "generation_config.json").unlink()
    (bare / "config.json").unlink()
    with pytest.raises(ModelError, match="neither generation_config.json nor config.json"):
        check_directory(bare)


def test_start_and_end_tokens_are_required(model_dir):
    (model_dir / "generation_config.json").write_text(json.dumps({"max_length": 5}))
    with pytest.raises(ModelError, match="decoder_start_token_id"):
        OnnxCaptioner(model_dir).load()


def test_preprocess_sizes_and_normalisation():
    x = preprocess(LIGHT, {"size": {"height": 32, "width": 48}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    assert x.shape == (3, 32, 48) and x.dtype == np.float32
    assert np.allclose(x[0], 240 / 127.5 - 1, atol=1e-5)
    y = preprocess(LIGHT, {"size": {"shortest_edge": 40}, "do_center_crop": True, "crop_size": {"height": 40, "width": 40}})
    assert y.shape == (3, 40, 40)
    z = preprocess(NIGHT, {"size": 16, "do_normalize": False, "do_rescale": False})
    assert z.shape == (3, 16, 16) and z.max() <= 255 and z[2].mean() == pytest.approx(30, abs=1)


def test_finish():
    assert finish("  a  cat on   a mat ") == "A cat on a mat."
    assert finish("what is this?") == "What is this?"
    assert finish("") == ""
