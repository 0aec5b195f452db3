"""Bad input never crashes the worker or stalls its partition: each image gets status=failed with a
machine-readable reason and a message, stored in Cassandra and shown by `show`."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image

from tests.conftest import PHOTOS

pytestmark = pytest.mark.integration


def bomb_png() -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def results(namespace, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "notes.jpg").write_bytes(b"this is a text file pretending to be a JPEG\n" * 20)
    data = (PHOTOS / "obama_portrait.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "bomb.png").write_bytes(bomb_png())
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (123.0, 0.0, 0.0), 3: "E", 4: (500.0, 0.0, 0.0)}  # impossible GPS
    exif[0x0112] = 77
    Image.new("RGB", (320, 240), (20, 160, 60)).save(buf, "JPEG", exif=exif.tobytes())
    (d / "garbage_exif.jpg").write_bytes(buf.getvalue())
    (d / "good.jpg").write_bytes((PHOTOS / "road_cars_canberra.jpg").read_bytes())
    namespace.start_worker()
    files = [str(d / n) for n in ["notes.jpg", "truncated.jpg", "bomb.png", "garbage_exif.jpg", "good.jpg"]]
    proc = namespace.cli("submit", "--user", "u9", "--wait", "--json", "--timeout", "120",
                         "file:///etc/passwd", *files, check=False)
    assert proc.returncode == 1, proc.stderr  # some images failed: exit 1, not a crash
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {line["file"].rsplit("/", 1)[-1]: line for line in lines}


@pytest.mark.parametrize("name,code", [("passwd", "outside_roots"), ("notes.jpg", "not_an_image"),
                                       ("truncated.jpg", "undecodable"), ("bomb.png", "too_many_pixels")])
def test_bad_images_fail_with_a_reason(namespace, results, name, code):
    r = results[name]
    assert r["status"] == "failed" and r["error"]["code"] == code and r["error"]["message"]
    shown = json.loads(namespace.cli("show", r["image_id"], "--json").stdout)
    assert shown["status"] == "failed" and shown["error_code"] == code and shown["error_message"]


def test_garbage_exif_keeps_the_image_and_drops_the_values(namespace, results):
    r = results["garbage_exif.jpg"]
    assert r["status"] == "complete"
    row = namespace.cql.execute("SELECT gps_lat, orientation FROM images WHERE image_id = %s", (r["image_id"],)).one()
    assert row.gps_lat is None and row.orientation == 1
    assert "gps_out_of_range" in namespace.log_path.read_text()


def test_the_worker_kept_going(namespace, results):
    assert results["good.jpg"]["status"] == "complete"
    assert namespace.worker.poll() is None
    log = namespace.log_path.read_text()
    assert "image_failed" in log and "Traceback" not in log


def test_missing_model_weights_fail_that_stage_and_the_image_completes_partial(stack, tmp_path):
    """A worker whose model cache is empty, told not to prepare it, keeps going: the stage reports
    model_unavailable."""
    from .conftest import Namespace

    ns = Namespace(stack, tmp_path / "data", cache_dir=tmp_path / "empty-cache", join_timeout_s=30, prepare_models="false")
    try:
        ns.cli("init")
        ns.start_worker()
        proc = ns.cli("submit", "--user", "u1", "--wait", "--json", "--stages", "scene,embedding",
                      str(PHOTOS / "road_cars_canberra.jpg"))
        r = json.loads(proc.stdout.splitlines()[-1])
        assert r["status"] == "partial"
        shown = json.loads(ns.cli("show", r["image_id"], "--json").stdout)
        assert shown["stages"]["scene"]["status"] == "failed"
        assert "model_unavailable" in shown["stages"]["scene"]["error"]
        assert "lensflow models prepare" in shown["stages"]["scene"]["error"]
        assert shown["stages"]["metadata"]["status"] == "ok" and shown["camera_make"] == "Canon"
    finally:
        ns.close()


def test_a_worker_prepares_the_models_its_stages_need_on_first_start(stack, tmp_path):
    """An empty model cache: the worker prepares what its stages load (here EfficientNet-Lite0 for
    scene and embedding) before it starts, and the image completes."""
    from .conftest import Namespace

    ns = Namespace(stack, tmp_path / "data", cache_dir=tmp_path / "empty-cache", join_timeout_s=30)
    try:
        ns.cli("init")
        ns.start_worker(stages="preprocess,scene,embedding,join")
        proc = ns.cli("submit", "--user", "u1", "--wait", "--json", "--stages", "scene,embedding",
                      str(PHOTOS / "road_cars_canberra.jpg"))
        assert json.loads(proc.stdout.splitlines()[-1])["status"] == "complete"
        log = ns.log_path.read_text(errors="replace")
        assert "preparing efficientnet-lite0" in log and "efficientnet-lite0: ready" in log
        assert (tmp_path / "empty-cache" / "models" / "efficientnet-lite0.onnx").exists()
    finally:
        ns.close()
