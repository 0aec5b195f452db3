"""Storage roots: an upload can only name files under a configured root."""

import os

import pytest

from lensflow.streams.errors import StageFailure
from lensflow.streams.storage import Storage, derivative_url


def test_inside_root_is_accepted_and_normalised(tmp_path):
    s = Storage([tmp_path.as_uri()])
    f = tmp_path / "a" / "b.jpg"
    assert s.check(f"file://{tmp_path}/a/./x/../b.jpg") == f"file://{f}"


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "/etc/passwd", "s3://bucket/x.jpg", "file://host/etc/passwd"])
def test_outside_roots_is_refused(tmp_path, uri):
    with pytest.raises(StageFailure) as exc:
        Storage([tmp_path.as_uri()]).check(uri)
    assert exc.value.code in ("outside_roots", "bad_uri")


def test_dotdot_escape_is_refused(tmp_path):
    with pytest.raises(StageFailure, match="outside"):
        Storage([tmp_path.as_uri()]).check(f"file://{tmp_path}/../../etc/passwd")


def test_prefix_sibling_is_not_inside(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(StageFailure):
        Storage([(tmp_path / "root").as_uri()]).check(f"file://{tmp_path}/root-evil/x.jpg")


def test_symlink_escape_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("/etc", root / "link")
    with pytest.raises(StageFailure):
        Storage([root.as_uri()]).check(f"file://{root}/link/passwd")


def test_object_store_roots_compare_bucket_and_path():
    s = Storage(["s3://photos/uploads"])
    assert s.check("s3://photos/uploads/u1/x.jpg") == "s3://photos/uploads/u1/x.jpg"
    with pytest.raises(StageFailure):
        s.check("s3://photos/private/x.jpg")


def test_read_write_and_limits(tmp_path):
    s = Storage([tmp_path.as_uri()])
    url = s.write(f"{tmp_path.as_uri()}/u/x.bin", b"12345")
    assert s.read(url, 10) == b"12345"
    with pytest.raises(StageFailure, match="limit"):
        s.read(url, 4)
    with pytest.raises(StageFailure) as exc:
        s.read(f"{tmp_path.as_uri()}/missing.jpg", 10)
    assert exc.value.code == "not_found"
    assert derivative_url(url).endswith("x.bin.prepared.jpg")


# --- file:// writes: unique temp files, never through a symlink ---------------------------------

import http.server
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import lensflow.streams.storage as storage_mod
from lensflow.streams.records import check_user_id


def test_concurrent_writes_of_one_path_all_succeed(tmp_path):
    s = Storage([tmp_path.as_uri()])
    url = f"{tmp_path.as_uri()}/uploads/u/same.jpg"
    payloads = [bytes([i]) * 1000 for i in range(100)]
    barrier = threading.Barrier(100)

    def write(data):
        barrier.wait()
        return s.write(url, data)

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(write, payloads))
    assert set(results) == {f"file://{tmp_path}/uploads/u/same.jpg"}
    assert (tmp_path / "uploads" / "u" / "same.jpg").read_bytes() in payloads
    assert os.listdir(tmp_path / "uploads" / "u") == ["same.jpg"]  # no temp file left behind


def test_symlink_planted_at_a_temp_name_is_not_followed(tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside.txt"
    (root / "u").mkdir(parents=True)
    outside.write_bytes(b"keep")
    os.symlink(outside, root / "u" / f"x.jpg.tmp-{os.getpid()}")  # the old, predictable temp name
    os.symlink(outside, root / "u" / ".x.jpg.fixed.tmp")  # the temp name the first token gives
    tokens = iter(["fixed", "other"])
    monkeypatch.setattr(storage_mod, "secrets", types.SimpleNamespace(token_hex=lambda n: next(tokens)))
    Storage([root.as_uri()]).write(f"{root.as_uri()}/u/x.jpg", b"new")
    assert outside.read_bytes() == b"keep"
    assert (root / "u" / "x.jpg").read_bytes() == b"new"
    assert os.path.islink(root / "u" / ".x.jpg.fixed.tmp")  # left alone
    assert not (root / "u" / ".x.jpg.other.tmp").exists()


def test_writing_onto_a_symlink_pointing_outside_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside.txt"
    root.mkdir()
    outside.write_bytes(b"keep")
    os.symlink(outside, root / "x.jpg")
    with pytest.raises(StageFailure) as exc:
        Storage([root.as_uri()]).write(f"{root.as_uri()}/x.jpg", b"new")
    assert exc.value.code == "outside_roots"
    assert outside.read_bytes() == b"keep"


def test_symlinks_swapped_in_after_the_check_are_refused(tmp_path):
    # the fence resolved the path before a symlink appeared (a race): the write itself must not follow it
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"keep")
    s = Storage([root.as_uri()])
    os.symlink(outside / "x.jpg", root / "x.jpg")
    os.symlink(outside, root / "dir")
    for path in (f"{root}/x.jpg", f"{root}/dir/x.jpg"):
        with pytest.raises(StageFailure) as exc:
            s._write_file(f"file://{path}", path, str(root), b"new")
        assert exc.value.code == "outside_roots"
    assert (outside / "x.jpg").read_bytes() == b"keep"
    assert os.listdir(outside) == ["x.jpg"]


def test_failed_write_leaves_no_temp_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jpg").mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(OSError):
        Storage([tmp_path.as_uri()]).write(f"{tmp_path.as_uri()}/d/x.jpg", b"new")
    assert os.listdir(tmp_path / "d") == ["x.jpg"]


# --- user ids and the per-user fence -------------------------------------------------------------

@pytest.mark.parametrize("user", ["alice", "a", "Bob.Smith", "u_1-2@example.com", "9lives", "x" * 64])
def test_safe_user_ids_are_accepted(user):
    assert check_user_id(user) == user


@pytest.mark.parametrize("user", ["", ".", "..", "a..b", ".hidden", "-x", "_x", "@x", "a/b", "a\\b", "a b", "x" * 65,
                                  "ä", "a\n", "../bob", "a:b", None, 3])
def test_unsafe_user_ids_are_refused(user):
    with pytest.raises(StageFailure) as exc:
        check_user_id(user)
    assert exc.value.code == "bad_user" and "\n" not in exc.value.message


def test_check_owned_fences_each_user_to_their_area(tmp_path):
    s = Storage([tmp_path.as_uri()])
    area = f"{tmp_path.as_uri()}/uploads/alice"
    assert s.check_owned(f"{area}/x.jpg", "alice") == f"file://{tmp_path}/uploads/alice/x.jpg"
    assert s.check_owned(f"{area}/sub/x.jpg.prepared.jpg", "alice").endswith("/uploads/alice/sub/x.jpg.prepared.jpg")
    for url in (f"{tmp_path.as_uri()}/uploads/bob/x.jpg", f"{area}/../bob/x.jpg", f"{tmp_path.as_uri()}/uploads/alice2/x.jpg",
                f"{tmp_path.as_uri()}/x.jpg", area, f"{area}/"):
        with pytest.raises(StageFailure) as exc:
            s.check_owned(url, "alice")
        assert exc.value.code == "wrong_owner" and "\n" not in exc.value.message, url
    with pytest.raises(StageFailure) as exc:
        s.check_owned(f"{tmp_path.as_uri()}/uploads/../x.jpg", "..")
    assert exc.value.code == "bad_user"
    with pytest.raises(StageFailure) as exc:  # the roots come first
        s.check_owned("file:///etc/passwd", "alice")
    assert exc.value.code == "outside_roots"


def test_check_owned_without_per_user_is_check(tmp_path):
    url = f"{tmp_path.as_uri()}/elsewhere/x.jpg"
    assert Storage([tmp_path.as_uri()]).check_owned(url, "alice", per_user=False) == f"file://{tmp_path}/elsewhere/x.jpg"
    assert Storage([tmp_path.as_uri()], per_user=False).check_owned(url, "alice") == f"file://{tmp_path}/elsewhere/x.jpg"
    with pytest.raises(StageFailure):
        Storage([tmp_path.as_uri()], per_user=False).check_owned(url, "alice", per_user=True)


def test_check_owned_on_object_store_and_http_roots():
    s = Storage(["s3://photos/lensflow", "https://cdn.example.com/photos"])
    assert s.check_owned("s3://photos/lensflow/uploads/u1/x.jpg", "u1") == "s3://photos/lensflow/uploads/u1/x.jpg"
    assert (s.check_owned("https://cdn.example.com/photos/uploads/u1/x.jpg?sig=a%2Fb", "u1")
            == "https://cdn.example.com/photos/uploads/u1/x.jpg?sig=a%2Fb")
    with pytest.raises(StageFailure, match="wrong_owner|storage area"):
        s.check_owned("s3://photos/lensflow/uploads/u2/x.jpg", "u1")
    with pytest.raises(StageFailure) as exc:  # decoded: uploads/u1/u2/y.jpg; as httpx sends it: uploads/u2/y.jpg
        s.check_owned("https://cdn.example.com/photos/uploads/u1/a%2Fb/../../u2/y.jpg", "u1")
    assert exc.value.code == "wrong_owner"


def _settings(tmp_path, **kw):
    from lensflow.streams.settings import Settings

    return Settings(data_dir=tmp_path, storage_url=(tmp_path / "storage").as_uri(), **kw)


def test_cli_refuses_an_unsafe_user_before_writing(tmp_path):
    from typer.testing import CliRunner

    from lensflow import cli
    from lensflow.cli.core import CliError
    from lensflow.cli.submit import _uploads

    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(CliError, match="not allowed") as exc:
        _uploads(_settings(tmp_path), "../bob", [str(photo)])
    assert exc.value.code == 2
    assert not (tmp_path / "storage").exists()
    result = CliRunner().invoke(cli.app, ["submit", str(photo), "--user", "[/x]/../.."])
    assert result.exit_code == 2 and "not allowed" in result.output
    assert _uploads(_settings(tmp_path), "alice", [str(photo)])[0]["uri"].startswith(
        f"file://{tmp_path}/storage/uploads/alice/")


# --- http(s) roots ---------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Handler.seen.append(self.path)
        port = self.server.server_address[1]
        path = self.path.split("?", 1)[0]
        routes = {
            "/photos/redirect": (302, f"http://127.0.0.1:{port}/photos/x.jpg?sig=1"),
            "/photos/relative": (307, "x.jpg"),
            "/photos/redirect-out": (302, f"http://127.0.0.1:{port}/private/x.jpg"),
            "/photos/redirect-file": (302, "file:///etc/passwd"),
            "/photos/loop": (302, "/photos/loop"),
        }
        if path in routes:
            status, location = routes[path]
            self.send_response(status)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status = {"/photos/x.jpg": 200, "/photos/big": 200, "/photos/missing": 404, "/photos/denied": 403,
                  "/photos/down": 503, "/private/x.jpg": 200}.get(path, 404)
        body = b"image" if status == 200 and path != "/photos/big" else b""
        self.send_response(status)
        if path == "/photos/big":  # no Content-Length: the limit must hold while streaming
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"x" * 1024)
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serving(handler, folder: str):
    """A local http server of ``handler`` for a test module: yields its ``folder`` URL, then stops."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{folder}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def http_root():
    yield from _serving(_Handler, "photos")


def test_http_query_string_is_kept(http_root):
    s = Storage([http_root])
    url = f"{http_root}/./x.jpg?X-Amz-Signature=abc%2Fdef&X-Amz-Expires=60"
    assert s.check(url) == f"{http_root}/x.jpg?X-Amz-Signature=abc%2Fdef&X-Amz-Expires=60"
    _Handler.seen.clear()
    assert s.read(url, 100) == b"image"
    assert _Handler.seen == ["/photos/x.jpg?X-Amz-Signature=abc%2Fdef&X-Amz-Expires=60"]


def test_http_redirect_to_a_private_address_is_refused_by_default(http_root):
    for path in ("redirect", "relative"):
        with pytest.raises(StageFailure) as exc:
            Storage([http_root]).read(f"{http_root}/{path}", 100)
        assert exc.value.code == "forbidden" and "127.0.0.1" in exc.value.message


def test_http_redirect_to_a_private_address_is_followed_when_allowed(http_root):
    s = Storage([http_root], allow_private_redirects=True)
    _Handler.seen.clear()
    assert s.read(f"{http_root}/redirect", 100) == b"image"
    assert _Handler.seen == ["/photos/redirect", "/photos/x.jpg?sig=1"]
    assert s.read(f"{http_root}/relative", 100) == b"image"


def test_http_redirects_stay_under_the_roots(http_root):
    s = Storage([http_root], allow_private_redirects=True)
    with pytest.raises(StageFailure) as exc:
        s.read(f"{http_root}/redirect-out", 100)
    assert exc.value.code == "outside_roots"
    with pytest.raises(StageFailure) as exc:
        s.read(f"{http_root}/redirect-file", 100)
    assert exc.value.code == "forbidden"
    with pytest.raises(StageFailure, match="redirects") as exc:
        s.read(f"{http_root}/loop", 100)


def test_http_status_codes_and_size_limit(http_root):
    s = Storage([http_root])
    for path, code in (("missing", "not_found"), ("denied", "forbidden"), ("big", "too_large")):
        with pytest.raises(StageFailure) as exc:
            s.read(f"{http_root}/{path}", 1000)
        assert exc.value.code == code, path
    with pytest.raises(StageFailure) as exc:
        s.read(f"{http_root}/down", 100)
    assert exc.value.retryable
    with pytest.raises(StageFailure, match="limit"):
        s.read(f"{http_root}/x.jpg", 3)


def test_http_connection_errors_raise_httpx_errors(tmp_path):
    import socket

    import httpx

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        Storage([f"http://127.0.0.1:{port}/photos"]).read(f"http://127.0.0.1:{port}/photos/x.jpg", 100)


@pytest.mark.parametrize("address,refused", [("127.0.0.1", True), ("10.1.2.3", True), ("169.254.169.254", True),
                                             ("192.168.0.1", True), ("100.64.0.1", True), ("0.0.0.0", True),
                                             ("224.0.0.1", True), ("::1", True), ("fe80::1%eth0", True),
                                             ("::ffff:127.0.0.1", True), ("fd00::1", True), ("93.184.216.34", False),
                                             ("2606:2800:220:1:248:1893:25c8:1946", False)])
def test_non_public_addresses(monkeypatch, address, refused):
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(family, socket.SOCK_STREAM, 6, "", (address, 80))])
    assert (storage_mod._non_public("example.com", 80) is not None) is refused


def test_http_fence_reads_both_encodings():
    s = Storage(["https://cdn.example.com/photos"])
    for url in ("https://cdn.example.com/photos/a%2Fb/../../secret", "https://cdn.example.com/photos/%2e%2e/secret",
                "https://cdn.example.com/photos/../secret", "https://cdn.example.com@evil.com/photos/x"):
        with pytest.raises(StageFailure):
            s.check(url)


def test_derivative_of_a_presigned_original_drops_the_query(tmp_path):
    s = Storage(["https://h/p", tmp_path.as_uri()])
    derived = derivative_url("https://h/p/x.jpg?sig=1", s)
    assert derived == derivative_url("https://h/p/x.jpg?sig=2", s) == derivative_url("https://h/p/x.jpg", s)
    assert derived.startswith(f"{tmp_path.as_uri()}/derived/") and "sig" not in derived[len(tmp_path.as_uri()):]
    assert derivative_url("s3://b/x.jpg") == "s3://b/x.jpg.prepared.jpg"


# --- isolation at the edges: redirects, the double decoding of a checked URL, derivatives of http(s)
# originals, the name `submit` stores a file under ----------------------------------------------------

def _png(size=(64, 48)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buf, "PNG")  # a PNG is never its own derivative
    return buf.getvalue()


class _Areas(http.server.BaseHTTPRequestHandler):
    """A storage root with two users' areas; alice's URLs redirect into her own area or into bob's."""

    seen: list[str] = []
    redirects = {
        "/store/uploads/alice/to-own.jpg": "/store/uploads/alice/own.jpg",
        "/store/uploads/alice/to-bob.jpg": "/store/uploads/bob/private.jpg",
        "/store/uploads/alice/hop.jpg": "/store/uploads/alice/hop-2.jpg",  # hop 1 stays, hop 2 leaves
        "/store/uploads/alice/hop-2.jpg": "../bob/private.jpg",
    }
    files = {"/store/uploads/alice/own.jpg": b"alice's", "/store/uploads/bob/private.jpg": b"bob's private",
             "/store/uploads/alice/photo.png": _png()}

    def log_message(self, *args):
        pass

    def do_GET(self):
        _Areas.seen.append(self.path)
        path = self.path.split("?", 1)[0]
        if path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.files.get(path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture(scope="module")
def areas():
    yield from _serving(_Areas, "store")


def test_an_http_redirect_never_leaves_the_users_area(areas):
    s = Storage([areas], allow_private_redirects=True)
    assert s.read(f"{areas}/uploads/alice/to-own.jpg", 100) == b"alice's"
    for name in ("to-bob.jpg", "hop.jpg"):  # at the first hop, and at the second
        _Areas.seen.clear()
        with pytest.raises(StageFailure) as exc:
            s.read(f"{areas}/uploads/alice/{name}", 100)
        assert exc.value.code == "wrong_owner" and "uploads/alice/" in exc.value.message, (name, exc.value.message)
        assert "/store/uploads/bob/private.jpg" not in _Areas.seen, f"{name}: bob's file was requested: {_Areas.seen}"
    # without per-user areas a redirect only has to stay under the roots
    assert Storage([areas], allow_private_redirects=True, per_user=False).read(
        f"{areas}/uploads/alice/to-bob.jpg", 100) == b"bob's private"


def test_a_checked_url_is_never_decoded_twice(tmp_path):
    """``%252e%252e`` is ``%2e%2e`` once decoded (a harmless folder name in alice's area) and ``..`` twice:
    reading or writing a URL that check_owned returned must not decode it again."""
    root = tmp_path / "root"
    (root / "uploads" / "bob").mkdir(parents=True)
    (root / "uploads" / "bob" / "x.jpg").write_bytes(b"bob's private")
    s = Storage([root.as_uri()])
    source = s.check_owned(f"{root.as_uri()}/uploads/alice/%252e%252e/bob/x.jpg", "alice")
    with pytest.raises(StageFailure) as exc:
        s.read(source, 100)  # <root>/uploads/alice/%2e%2e/bob/x.jpg does not exist
    assert exc.value.code == "not_found", f"read {source!r} gave {exc.value.code}: {exc.value.message}"
    assert s.check_owned(source, "alice") == source  # a checked URL checks the same again
    s.write(derivative_url(source), b"derivative")
    assert sorted(p.name for p in (root / "uploads" / "bob").iterdir()) == ["x.jpg"]
    assert (root / "uploads" / "alice" / "%2e%2e" / "bob" / "x.jpg.prepared.jpg").read_bytes() == b"derivative"


def test_the_derivative_of_an_http_original_is_written_under_the_storage_url(areas, tmp_path):
    from lensflow.agents.preprocess import Limits, _work
    from lensflow.streams.settings import Settings

    home = (tmp_path / "storage").as_uri()
    s = Storage([areas, home], allow_private_redirects=True)
    original = f"{areas}/uploads/alice/photo.png?X-Amz-Signature=abc"
    outcome = _work(s, s.check_owned(original, "alice"), Limits.from_settings(Settings(_env_file=None)), 1)
    assert outcome.error is None, outcome.error
    uri = outcome.fields["uri"]
    assert uri.startswith(f"{home}/uploads/alice/") and uri.endswith(".prepared.jpg"), uri
    assert s.check_owned(uri, "alice") == uri
    assert s.read(uri, 10**6)[:3] == b"\xff\xd8\xff"  # a JPEG
    # the same object under another signature has the same derivative; another object another one
    assert derivative_url(f"{areas}/uploads/alice/photo.png?X-Amz-Signature=def", s) == uri
    assert derivative_url(f"{areas}/uploads/alice/other.png", s) != uri


def test_http_urls_are_never_written_and_need_a_writable_root_for_derivatives(areas):
    s = Storage([areas])
    with pytest.raises(StageFailure) as exc:
        s.write(f"{areas}/uploads/alice/x.jpg", b"x")
    assert exc.value.code == "bad_uri" and "cannot be written" in exc.value.message
    with pytest.raises(StageFailure) as exc:
        derivative_url(f"{areas}/uploads/alice/photo.png", s)
    assert "LENSFLOW_STORAGE_URL" in exc.value.message


@pytest.mark.parametrize("name,suffix", [("a.%2e%2e%2f%2e%2e%2f%2e%2e%2fbob%2fvictim", ""), ("b.JPG", ".jpg"),
                                         ("c.jpeg", ".jpeg"), ("d.png", ".png"), ("e.exe", ""), ("f", ""),
                                         ("g.%2fjpg", ""), ("h.tar.gz", "")])
def test_submit_stores_a_file_under_its_id_and_an_allowed_extension_only(tmp_path, name, suffix):
    from lensflow.cli.submit import _uploads

    photo = tmp_path / "in" / name
    photo.parent.mkdir()
    photo.write_bytes(b"\xff\xd8\xff" + name.encode())
    (u,) = _uploads(_settings(tmp_path), "mallory", [str(photo)])
    area = tmp_path / "storage" / "uploads" / "mallory"
    assert u["uri"] == f"file://{area}/{u['image_id']}{suffix}", u["uri"]
    assert [p.relative_to(tmp_path / "storage") for p in (tmp_path / "storage").rglob("*") if p.is_file()] == [
        (area / f"{u['image_id']}{suffix}").relative_to(tmp_path / "storage")]
