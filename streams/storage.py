"""Storage I/O through fsspec, fenced to the configured roots.

An upload names its original by URL (``file://`` by default; ``s3://``, ``gs://``, ``http(s)://`` when
their fsspec extras are installed). Only URLs under a configured root are read or written, checked
after normalisation (``..`` segments, and for ``file://`` symlinks too), so an upload event cannot
make a worker read ``/etc/passwd``. With ``per_user`` (the default) an upload's URL must moreover lie
in its user's own area, ``<root>/uploads/<user_id>/`` (``check_owned``).

A checked URL is canonical: checking it again gives the same URL and the same path (``%``, ``?``,
``#`` and line breaks in a path are percent-encoded in it), and reads and writes open the path that
was checked, never the URL decoded once more (``%252e%252e`` must stay a folder named ``%2e%2e``,
not become ``..``).

``http(s)://`` URLs keep their query string (presigned URLs), and are read with httpx, following at
most ``MAX_REDIRECTS`` redirects by hand: each target must lie under a root too, in the same user's
area as the URL read (``check_owned``, hop by hop, when that URL lies in a user's area), and must not
resolve to a loopback, link-local, private or otherwise non-public address unless
``allow_private_redirects`` (an open redirect must not reach internal services). The first URL is not
checked that way: it is under a configured root, which the operator chose. http(s) URLs are never
written: the derivative of an http(s) original goes under the storage's ``home`` (``derivative_url``).

``file://`` writes go to a temp file created with O_CREAT|O_EXCL|O_NOFOLLOW under a random name in the
target folder, then renamed over the target; folders are walked from the root with O_NOFOLLOW, so a
symlink planted in the tree (at the temp name, at the target, or in its place of a folder) is never
followed.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import ipaddress
import os
import posixpath
import secrets
import socket
import stat
import threading
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import fsspec
import httpx

from .errors import ErrorCode, StageFailure
from .records import check_user_id

#: seconds an http(s) read may wait to connect, and between two chunks of the body
HTTP_TIMEOUT_S = 30.0
#: redirects an http(s) read follows before giving up
MAX_REDIRECTS = 5
_HTTP = ("http", "https")
#: URL scheme -> (the fsspec implementation's module, the lensflow extra that installs it)
BACKENDS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}


def missing_backend(urls: list[str]) -> str | None:
    """One line naming the extra to install when a storage URL needs an fsspec backend that is missing
    (checked when a worker starts: fsspec itself would say so only on the first read)."""

    for url in urls:
        scheme = urlsplit(url).scheme.lower()
        module, extra = BACKENDS.get(scheme, (None, None))
        if module and importlib.util.find_spec(module) is None:
            return f"storage {_shown(url)} needs {module}: pip install 'lensflow[{extra}]'"
    return None
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _normalise(url: str) -> tuple[str, str]:
    """(protocol, normalised path) of a URL; plain paths count as file://."""
    if "://" not in url:
        return "file", os.path.realpath(os.path.abspath(os.path.expanduser(url)))
    parts = urlsplit(url)
    protocol = parts.scheme.lower()
    if protocol == "file":
        if parts.netloc not in ("", "localhost"):
            raise StageFailure(ErrorCode.BAD_URI, f"file URL with a host is not supported: {_shown(url)}")
        return protocol, os.path.realpath(unquote(parts.path) or "/")
    # one leading slash: normpath keeps a leading "//" (POSIX), which a root written scheme:///path would
    # get and none of the URLs under it (to_url writes scheme://path)
    path = posixpath.normpath("/" + (parts.netloc + unquote(parts.path)).lstrip("/"))
    return protocol, path


#: characters of a normalised path that a URL would not give back as they are: ``%`` (decoded again),
#: ``?`` and ``#`` (a query, a fragment), tab and line breaks (dropped by urlsplit)
_ESCAPES = {"%": "%25", "?": "%3F", "#": "%23", "\t": "%09", "\n": "%0A", "\r": "%0D"}


def to_url(protocol: str, path: str) -> str:
    """The canonical URL of a normalised (decoded) path: ``_normalise`` gives the same path back."""
    path = "".join(_ESCAPES.get(c, c) for c in path)
    return f"file://{path}" if protocol == "file" else f"{protocol}://{path.lstrip('/')}"


def _target(protocol: str, path: str) -> str:
    """What fsspec opens for a normalised path (fsspec does not decode a URL's path)."""
    return path if protocol == "file" else f"{protocol}://{path.lstrip('/')}"


def _shown(url: str) -> str:
    """A URL as error messages show it: one line, without its query string (a presigned URL's query is a
    credential)."""
    text = str(url)
    if "://" in text:
        parts = urlsplit(text)
        if parts.query or parts.fragment:
            text = urlunsplit(parts._replace(query="", fragment="")) + "?…"
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= 300 else text[:300] + "…"


@dataclass(frozen=True)
class _Parsed:
    protocol: str
    #: every reading of the path that must lie under a root; the first is the canonical one
    paths: tuple[str, ...]
    #: the normalised URL (http(s): its path with dot segments removed, still percent-encoded, and its query)
    url: str


def _parse(url: str) -> _Parsed:
    protocol, path = _normalise(url)
    if protocol not in _HTTP:
        return _Parsed(protocol, (path,), to_url(protocol, path))
    parts = urlsplit(url)
    if not parts.hostname:
        raise StageFailure(ErrorCode.BAD_URI, f"http(s) URL without a host: {_shown(url)}")
    # httpx sends the path with its dot segments removed but still percent-encoded, and a server may
    # decode before or after removing them: both readings must stay under the root (a%2Fb/../.. differs)
    raw = posixpath.normpath("/" + parts.netloc + parts.path)
    fenced = (path,) if unquote(raw) == path else (path, unquote(raw))
    query = f"?{parts.query}" if parts.query else ""
    return _Parsed(protocol, fenced, f"{protocol}://{raw.lstrip('/')}{query}")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _non_public(host: str, port: int) -> str | None:
    """The first address ``host`` resolves to that is loopback, link-local, private, reserved, multicast
    or otherwise not global; None when every address is public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from None  # transient, like any DNS failure
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_reserved or ip.is_multicast
                or ip.is_unspecified or not ip.is_global):
            return str(ip)
    return None


class Storage:
    """Reads and writes fenced to ``roots``. ``home``: the root under which the derivatives of http(s)
    originals are written (http(s) is read-only); default: the first root that is not http(s), which is
    ``LENSFLOW_STORAGE_URL`` unless ``LENSFLOW_STORAGE_ROOTS`` lists another one before it."""

    def __init__(self, roots: list[str], *, allow_private_redirects: bool = False, per_user: bool = True,
                 home: str | None = None):
        if not roots:
            raise ValueError("at least one storage root is required")
        self.roots = [_normalise(r) for r in roots]
        self.allow_private_redirects = allow_private_redirects
        self.per_user = per_user
        if home is None:
            home = next((to_url(p, path) for p, path in self.roots if p not in _HTTP), None)
        elif _normalise(home)[0] in _HTTP:
            raise ValueError(f"the storage home {_shown(home)} is http(s), which cannot be written")
        else:
            home = to_url(*_normalise(home))
        self.home = home.rstrip("/") if home else None
        self._http = None
        self._http_lock = threading.Lock()

    # fences ----------------------------------------------------------------------------------------
    def _match(self, url: str) -> tuple[_Parsed, list[str]]:
        """The parsed URL and the paths of the roots it lies under; StageFailure('outside_roots') when none."""
        parsed = _parse(url)
        roots = [r_path for r_protocol, r_path in self.roots
                 if r_protocol == parsed.protocol and all(_under(p, r_path) for p in parsed.paths)]
        if not roots:
            raise StageFailure(ErrorCode.OUTSIDE_ROOTS, f"{_shown(url)} is outside the configured storage roots")
        return parsed, roots

    def check(self, url: str) -> str:
        """The normalised URL when it lies under a root; StageFailure('outside_roots') otherwise."""
        return self._match(url)[0].url

    def check_owned(self, url: str, user_id: str, per_user: bool | None = None) -> str:
        """``check(url)``, and with ``per_user`` (default: the storage's) the URL must also lie in the
        user's own area, ``<root>/uploads/<user_id>/`` of a root it lies under:
        StageFailure('bad_user') for an unsafe user id, StageFailure('wrong_owner') for another area."""
        parsed, roots = self._match(url)
        if self.per_user if per_user is None else per_user:
            check_user_id(user_id)
            areas = [f"{r.rstrip('/')}/uploads/{user_id}/" for r in roots]
            if not any(all(p.startswith(area) for p in parsed.paths) for area in areas):
                raise StageFailure(ErrorCode.WRONG_OWNER,
                                   f"{_shown(url)} is not in the storage area of user {user_id} (uploads/{user_id}/ of a storage root)")
        return parsed.url

    def _owner(self, parsed: _Parsed, roots: list[str]) -> str | None:
        """The user whose area ``<root>/uploads/<user>/`` every reading of the URL lies in (None without
        ``per_user``, or outside every area): its redirects must stay there."""
        if not self.per_user:
            return None
        for root in roots:
            prefix = f"{root.rstrip('/')}/uploads/"
            if parsed.paths[0].startswith(prefix):
                user = parsed.paths[0][len(prefix):].split("/", 1)[0]
                if user and all(p.startswith(f"{prefix}{user}/") for p in parsed.paths):
                    return user
        return None

    def http_derivative(self, original: str) -> str:
        """Where the derivative of the http(s) ``original`` is written: under ``home``, in the area of the
        original's user (``<home>/uploads/<user>/derived/``, ``<home>/derived/`` outside any area), named
        by the SHA-256 of the original's URL without its query string (a presigned URL's signature
        changes, the object does not; a name taken from the URL could carry anything)."""
        parsed, roots = self._match(original)
        if self.home is None:
            raise StageFailure(ErrorCode.OUTSIDE_ROOTS,
                               f"nowhere to write the derivative of {_shown(original)}: http(s) storage cannot be "
                               "written and no other storage root is configured (add LENSFLOW_STORAGE_URL to "
                               "LENSFLOW_STORAGE_ROOTS)")
        digest = hashlib.sha256(parsed.url.split("?", 1)[0].encode()).hexdigest()[:32]
        owner = self._owner(parsed, roots)
        return f"{self.home}/{f'uploads/{owner}/derived' if owner else 'derived'}/{digest}.prepared.jpg"

    # reads -----------------------------------------------------------------------------------------
    def read(self, url: str, max_bytes: int) -> bytes:
        parsed, roots = self._match(url)
        url = parsed.url
        if parsed.protocol in _HTTP:
            return self._read_http(url, max_bytes, self._owner(parsed, roots))
        try:
            with fsspec.open(_target(parsed.protocol, parsed.paths[0]), "rb") as fh:
                data = fh.read(max_bytes + 1)
        except FileNotFoundError:
            raise StageFailure(ErrorCode.NOT_FOUND, f"{_shown(url)} does not exist") from None
        except IsADirectoryError:
            raise StageFailure(ErrorCode.NOT_FOUND, f"{_shown(url)} is a directory") from None
        except PermissionError:
            raise StageFailure(ErrorCode.FORBIDDEN, f"no permission to read {_shown(url)}") from None
        if len(data) > max_bytes:
            raise StageFailure(ErrorCode.TOO_LARGE, f"original is larger than the {max_bytes} byte limit")
        return data

    def _client(self):
        with self._http_lock:
            if self._http is None:
                self._http = httpx.Client(follow_redirects=False, timeout=HTTP_TIMEOUT_S,
                                          headers={"Accept-Encoding": "identity"})
            return self._http

    def _redirect(self, current: str, location: str, owner: str | None = None) -> str:
        """The checked URL a redirect from ``current`` to ``location`` leads to: under a root, and in
        ``owner``'s area when the first URL was in it (``check_owned``: wrong_owner otherwise)."""
        target = urljoin(current, location)
        parts = urlsplit(target)
        if parts.scheme.lower() not in _HTTP:
            raise StageFailure(ErrorCode.FORBIDDEN, f"{_shown(current)} redirects to a non-http(s) URL: {_shown(target)}")
        # outside_roots unless the target is under a root too; wrong_owner unless in the same user's area
        checked = self.check_owned(target, owner, per_user=True) if owner else self.check(target)
        if not self.allow_private_redirects:
            parts = urlsplit(checked)
            host = parts.hostname or ""
            address = _non_public(host, parts.port or (443 if parts.scheme == "https" else 80))
            if address is not None:
                raise StageFailure(ErrorCode.FORBIDDEN,
                                   f"redirect to {host} refused: it resolves to {address}, a loopback, link-local, "
                                   "private or reserved address (storage_allow_private_redirects is off)")
        return checked

    def _read_http(self, url: str, max_bytes: int, owner: str | None = None) -> bytes:
        """GET ``url`` (already checked), following redirects by hand, each into ``owner``'s area when
        given; 5xx, 408, 429 are transient (retryable StageFailure); timeouts and connection errors raise
        httpx's exception (transient too)."""

        client = self._client()
        current = url
        for hop in range(MAX_REDIRECTS + 1):
            try:
                with client.stream("GET", current) as resp:
                    if resp.is_redirect:
                        if hop == MAX_REDIRECTS:
                            raise StageFailure(ErrorCode.BAD_URI, f"{_shown(url)}: more than {MAX_REDIRECTS} redirects")
                        current = self._redirect(current, resp.headers["location"], owner)
                        continue
                    status = resp.status_code
                    if status in (404, 410):
                        raise StageFailure(ErrorCode.NOT_FOUND, f"{_shown(current)} does not exist (HTTP {status})")
                    if status in (401, 403):
                        raise StageFailure(ErrorCode.FORBIDDEN, f"no permission to read {_shown(current)} (HTTP {status})")
                    if status >= 500 or status in (408, 429):
                        raise StageFailure(ErrorCode.TRANSIENT, f"{_shown(current)} answered HTTP {status}", retryable=True)
                    if not 200 <= status < 300:
                        raise StageFailure(ErrorCode.BAD_URI, f"{_shown(current)} answered HTTP {status}")
                    length = resp.headers.get("content-length", "")
                    if length.isdigit() and int(length) > max_bytes:
                        raise StageFailure(ErrorCode.TOO_LARGE, f"original is larger than the {max_bytes} byte limit")
                    data = bytearray()
                    for chunk in resp.iter_bytes():
                        data += chunk
                        if len(data) > max_bytes:
                            raise StageFailure(ErrorCode.TOO_LARGE, f"original is larger than the {max_bytes} byte limit")
                    return bytes(data)
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                raise StageFailure(ErrorCode.BAD_URI, f"{_shown(current)}: {exc}") from None
        raise AssertionError("unreachable")

    # writes ----------------------------------------------------------------------------------------
    def write(self, url: str, data: bytes) -> str:
        """Write atomically where the filesystem allows (file://: unique temp file + rename); http(s) URLs
        are refused (``bad_uri``): see ``derivative_url``."""
        parsed, roots = self._match(url)
        if parsed.protocol in _HTTP:
            raise StageFailure(ErrorCode.BAD_URI, f"{_shown(url)} cannot be written: http(s) storage is read-only")
        if parsed.protocol == "file":
            self._write_file(parsed.url, parsed.paths[0], max(roots, key=len), data)
        else:
            with fsspec.open(_target(parsed.protocol, parsed.paths[0]), "wb") as fh:
                fh.write(data)
        return parsed.url

    def _write_file(self, url: str, path: str, root: str, data: bytes) -> None:
        """Write ``path`` (normalised, under ``root``) without following any symlink below the root."""
        rel = path[len(root.rstrip("/")) + 1:] if path != root else ""
        *folders, name = rel.split("/")
        if not name:
            raise StageFailure(ErrorCode.BAD_URI, f"{_shown(url)} names no file")
        os.makedirs(root, exist_ok=True)  # the root itself is the operator's (symlinks in it are theirs)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        try:
            for folder in folders:
                try:
                    os.mkdir(folder, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    sub = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise StageFailure(ErrorCode.OUTSIDE_ROOTS,
                                           f"{_shown(url)}: {folder} is a symlink or not a folder") from None
                    raise
                os.close(fd)
                fd = sub
            try:
                if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise StageFailure(ErrorCode.OUTSIDE_ROOTS, f"{_shown(url)} is a symlink: not written")
            except FileNotFoundError:
                pass
            tmp, tmp_fd = self._temp(fd, name)
            try:
                with os.fdopen(tmp_fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=fd)
                except FileNotFoundError:
                    pass
                raise
        finally:
            os.close(fd)

    @staticmethod
    def _temp(dir_fd: int, name: str) -> tuple[str, int]:
        """A new temp file next to ``name`` in the folder ``dir_fd``: a random name, created exclusively,
        never through a symlink (O_EXCL fails on any existing entry, a symlink included)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
        for _ in range(100):
            tmp = f".{name[:200]}.{secrets.token_hex(8)}.tmp"
            try:
                return tmp, os.open(tmp, flags, 0o666, dir_fd=dir_fd)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temp file name", name)


def derivative_url(original: str, storage: Storage | None = None) -> str:
    """Where preprocess stores the normalised derivative of an original (a checked URL): next to it; an
    http(s) original's under ``storage``'s home (``Storage.http_derivative``: http(s) cannot be written)."""
    if urlsplit(original).scheme.lower() in _HTTP:
        if storage is None:
            raise ValueError("the derivative of an http(s) original is written under the storage's home: pass the storage")
        return storage.http_derivative(original)
    return f"{original}.prepared.jpg"
