"""The wheel as users get it: built from the checkout as a release builds it (``python -m build``: the sdist,
then the wheel from the sdist), installed with all its dependencies from PyPI into a fresh virtual
environment outside the checkout, and run from a folder outside it with an environment that names no
checkout path. pip's download cache (~/.cache/pip) makes a second run fast; nothing else is reused.

``LENSFLOW_WHEEL_PYTHON`` picks the interpreter of that environment (default: the one running the tests),
e.g. a python3.12 to check what pyproject's requires-python says."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT


@dataclass
class Installed:
    wheel: Path
    sdist: Path
    build_log: str
    venv: Path
    outside: Path  # a folder outside the checkout, the commands' working directory
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a user's shell: no PYTHONPATH, no LENSFLOW_* but what ``extra`` sets."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LENSFLOW_", "PYTHON", "VIRTUAL_ENV")) or k == "PYTHONUNBUFFERED"}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def lensflow(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / "lensflow"), *args], cwd=self.outside, env=self.env(**env),
                              capture_output=True, text=True, timeout=timeout)


def build_and_install(tmp: Path) -> Installed:
    dist, venv, outside = tmp / "dist", tmp / "venv", tmp / "outside"
    outside.mkdir()
    timings = {}
    t0 = time.monotonic()
    # byte-compiling on: with PYTHONDONTWRITEBYTECODE setuptools says it skips it, which is no packaging warning
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], env=env,
                          capture_output=True, text=True, timeout=900)
    build_log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"python -m build failed:\n{build_log[-6000:]}")
    timings["build_s"] = time.monotonic() - t0
    (wheel,) = dist.glob("lensflow-*.whl")
    (sdist,) = dist.glob("lensflow-*.tar.gz")
    base = os.environ.get("LENSFLOW_WHEEL_PYTHON") or getattr(sys, "_base_executable", sys.executable)
    t0 = time.monotonic()
    subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                           "--progress-bar", "off", str(wheel)], cwd=outside, capture_output=True, text=True,
                          timeout=1800, env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    if proc.returncode != 0:
        raise AssertionError(f"pip install {wheel.name} failed:\n{(proc.stdout + proc.stderr)[-6000:]}")
    timings["install_s"] = time.monotonic() - t0
    return Installed(wheel, sdist, build_log, venv, outside, timings)
