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
