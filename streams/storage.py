"""Storage I/O through fsspec, fenced to the configured roots.

An upload names its original by URL (``file://`` by default; ``s3://``, ``gs://``, ``http(s)://`` when
their fsspec extras are installed). Only URLs under a configured root are read or written, checked
after normalisation (``..`` segments, and for ``file://`` symlinks too), so an upload event cannot
make a worker read ``/etc/passwd``.
"""

from __future__ import annotations

import os
import posixpath
from urllib.parse import unquote, urlsplit

import fsspec

from .errors import StageFailure


def _normalise(url: str) -> tuple[str, str]:
    """(protocol, normalised path) of a URL; plain paths count as file://."""
    if "://" not in url:
        return "file", os.path.realpath(os.path.abspath(os.path.expanduser(url)))
    parts = urlsplit(url)
    protocol = parts.scheme.lower()
    if protocol == "file":
        if parts.netloc not in ("", "localhost"):
            raise StageFailure("bad_uri", f"file URL with a host is not supported: {url}")
        return protocol, os.path.realpath(unquote(parts.path) or "/")
    path = posixpath.normpath("/" + parts.netloc + unquote(parts.path))
    return protocol, path


def to_url(protocol: str, path: str) -> str:
    return f"file://{path}" if protocol == "file" else f"{protocol}://{path.lstrip('/')}"


class Storage:
    def __init__(self, roots: list[str]):
        if not roots:
            raise ValueError("at least one storage root is required")
        self.roots = [_normalise(r) for r in roots]

    def check(self, url: str) -> str:
        """The normalised URL when it lies under a root; StageFailure('outside_roots') otherwise."""
        protocol, path = _normalise(url)
        for r_protocol, r_path in self.roots:
            if protocol == r_protocol and (path == r_path or path.startswith(r_path.rstrip("/") + "/")):
                return to_url(protocol, path)
        raise StageFailure("outside_roots", f"{url} is outside the configured storage roots")

    def read(self, url: str, max_bytes: int) -> bytes:
        url = self.check(url)
        try:
            with fsspec.open(url, "rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError:
            raise StageFailure("not_found", f"{url} does not exist") from None
        except IsADirectoryError:
            raise StageFailure("not_found", f"{url} is a directory") from None
        except PermissionError:
            raise StageFailure("forbidden", f"no permission to read {url}") from None
        if len(data) > max_bytes:
            raise StageFailure("too_large", f"original is larger than the {max_bytes} byte limit")
        return data

    def write(self, url: str, data: bytes) -> str:
        """Write atomically where the filesystem allows (file://: temp file + rename)."""
        url = self.check(url)
        protocol, path = _normalise(url)
        if protocol == "file":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        else:
            with fsspec.open(url, "wb") as fh:
                fh.write(data)
        return url


def derivative_url(original: str) -> str:
    """Where preprocess stores the normalised derivative of an original: next to it."""
    return f"{original}.prepared.jpg"
