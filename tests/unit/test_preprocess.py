"""preprocess's pure logic: sniffing, limits, decode, orientation, resize, derivative reuse."""

import hashlib
import io
import struct
import zlib

import pytest
from PIL import Image, ImageOps

from lensflow.agents.preprocess import Limits, prepare, sniff
from tests.conftest import PHOTOS

LIMITS = Limits(max_bytes=20 * 1024 * 1024, max_pixels=50_000_000, max_side=1600, jpeg_quality=85,
                formats=["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"])


def jpeg(w, h, **save):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 200)).save(buf, "JPEG", **save)
    return buf.getvalue()


def png_header_only(w, h):
    """A PNG whose header claims w x h pixels: a decompression bomb is refused before any decode."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("name,fmt", [("cat_chelsea.png", "PNG"), ("prague_street.tif", "TIFF"),
                                      ("hand_knife_orientation6.webp", "WEBP"), ("obama_portrait.jpg", "JPEG")])
def test_sniff_reads_magic_bytes(name, fmt):
    assert sniff((PHOTOS / name).read_bytes()) == fmt


def test_sniff_ignores_names_and_claims():
    assert sniff(b"%PDF-1.7 ...") is None
    assert sniff(b"GIF89a" + b"\x00" * 10) == "GIF"
    assert sniff(b"\x00\x00\x00\x1cftypheic" + b"\x00" * 8) == "HEIF"
    assert sniff(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 8) == "AVIF"


@pytest.mark.parametrize("data,code", [
    (b"", "empty"),
    (b"hello, this is plain text and not an image", "not_an_image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "undecodable"),
])
def test_bad_input_fails_with_a_reason(data, code):
    out = prepare(data, LIMITS)
    assert out.error is not None and out.error.code == code and out.error.message


def test_truncated_jpeg_fails_at_decode():
    data = (PHOTOS / "obama_portrait.jpg").read_bytes()
    out = prepare(data[: len(data) // 2], LIMITS)
    assert out.error.code == "undecodable"
    assert out.metadata is not None  # the EXIF in the first half was still read


def test_byte_limit():
    out = prepare(jpeg(64, 64), Limits(**{**LIMITS.__dict__, "max_bytes": 100}))
    assert out.error.code == "too_large"


def test_pixel_limit_refuses_a_bomb_from_its_header():
    out = prepare(png_header_only(60_000, 60_000), LIMITS)
    assert out.error.code == "too_many_pixels" and "3600000000" in out.error.message


def test_format_allow_list():
    out = prepare((PHOTOS / "cat_chelsea.png").read_bytes(), Limits(**{**LIMITS.__dict__, "formats": ["JPEG"]}))
    assert out.error.code == "format_not_allowed"


def test_conforming_jpeg_is_its_own_derivative():
    data = jpeg(800, 600)
    out = prepare(data, LIMITS)
    assert out.error is None and out.derivative is None
    assert out.fields["sha256"] == out.fields["derivative_sha256"] == hashlib.sha256(data).hexdigest()
    assert (out.fields["width"], out.fields["height"]) == (800, 600)


def test_large_jpeg_is_capped_on_the_long_side():
    out = prepare(jpeg(4000, 3000), LIMITS)
    assert out.error is None
    img = Image.open(io.BytesIO(out.derivative))
    assert img.format == "JPEG" and img.size == (1600, 1200)
    assert (out.fields["original_width"], out.fields["original_height"]) == (4000, 3000)


def test_exif_orientation_is_applied_like_pillows_exif_transpose():
    data = (PHOTOS / "hopper_face_orientation6.jpg").read_bytes()
    out = prepare(data, LIMITS)
    assert out.error is None and out.fields["orientation"] == 6
    ours = Image.open(io.BytesIO(out.derivative)).convert("RGB")
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert ours.size == reference.size
    # same picture up to JPEG re-encoding: mean absolute difference of a few levels
    diff = sum(abs(a - b) for pa, pb in zip(ours.getdata(), reference.getdata()) for a, b in zip(pa, pb))
    assert diff / (ours.width * ours.height * 3) < 6


def test_rotated_phone_photo_swaps_dimensions_and_is_capped():
    out = prepare((PHOTOS / "bicycle_street_orientation6.jpg").read_bytes(), LIMITS)
    assert out.error is None
    assert (out.fields["original_width"], out.fields["original_height"]) == (3024, 4032)
    assert (out.fields["width"], out.fields["height"]) == (1200, 1600)


def test_png_with_alpha_becomes_rgb_jpeg():
    buf = io.BytesIO()
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(buf, "PNG")
    out = prepare(buf.getvalue(), LIMITS)
    img = Image.open(io.BytesIO(out.derivative))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)


def test_garbage_exif_never_fails_the_image():
    data = bytearray(jpeg(64, 64, exif=b"Exif\x00\x00" + b"MM\x00*" + b"\xff" * 60))
    out = prepare(bytes(data), LIMITS)
    assert out.error is None and out.metadata is not None


def test_shrink_matches_pillow_closely_and_keeps_the_mode():
    import numpy as np
    from PIL import Image

    from lensflow.agents.preprocess import shrink

    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:1224, 0:1632]
    base = np.stack([x / 1632 * 255, y / 1224 * 255, (x + y) % 256], -1)
    img = Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))
    for im in (img, img.convert("L")):
        out = shrink(im, (1600, 1200))  # < 2x: OpenCV
        ref = im.resize((1600, 1200), Image.Resampling.BILINEAR)
        assert out.mode == im.mode and out.size == (1600, 1200)
        assert np.abs(np.asarray(out, float) - np.asarray(ref, float)).mean() < 2.0
    assert shrink(img, (400, 300)).size == (400, 300)  # >= 2x: Pillow's antialiased path
