"""EXIF extraction against what exiftool (an independent reader) says the sample files hold."""

import io
import json
from datetime import datetime, timezone

import pytest
from PIL import Image

from lensflow.agents import metadata
from tests.conftest import PHOTOS

EXPECTED = json.loads((PHOTOS / "expected_exif.json").read_text())


def extract(name):
    with Image.open(PHOTOS / name) as img:
        return metadata.extract(img)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fields_equal_what_exiftool_reads(name):
    exp, got = EXPECTED[name], extract(name)
    if "Make" in exp:
        assert got["camera_make"] == exp["Make"].strip()
    if "Model" in exp:
        assert got["camera_model"] == exp["Model"].strip()
    if "LensModel" in exp:
        assert got["lens_model"] == exp["LensModel"].strip()
    if "FNumber" in exp:
        assert got["f_number"] == pytest.approx(exp["FNumber"], abs=0.01)
    if "ExposureTime" in exp:
        assert got["exposure_time_s"] == pytest.approx(exp["ExposureTime"], rel=1e-6)
    if "ISO" in exp:
        assert got["iso"] == exp["ISO"]
    if "FocalLength" in exp:
        assert got["focal_length_mm"] == pytest.approx(exp["FocalLength"], abs=0.01)
    assert got["orientation"] == exp.get("Orientation", 1)
    if "GPSLatitude" in exp:
        assert got["gps"]["lat"] == pytest.approx(exp["GPSLatitude"], abs=1e-6)
        assert got["gps"]["lon"] == pytest.approx(exp["GPSLongitude"], abs=1e-6)
        if "GPSAltitude" in exp:
            assert got["gps"]["alt_m"] == pytest.approx(exp["GPSAltitude"], abs=0.01)
    else:
        assert "gps" not in got
    if "DateTimeOriginal" in exp:
        wall = datetime.strptime(exp["DateTimeOriginal"][:19], "%Y:%m:%d %H:%M:%S")
        assert got["taken_at_local"][:19] == wall.isoformat()
        if "OffsetTimeOriginal" in exp:
            assert got["tz_offset"] == exp["OffsetTimeOriginal"]
            assert got["taken_at"].replace(microsecond=0) == datetime.fromisoformat(wall.isoformat() + exp["OffsetTimeOriginal"]).astimezone(timezone.utc)
        else:
            assert "tz_offset" not in got and got["taken_at"].replace(microsecond=0) == wall.replace(tzinfo=timezone.utc)


def test_expected_file_covers_gps_offsets_and_rotation():
    # the sample set must keep exercising the interesting cases
    assert sum("GPSLatitude" in e for e in EXPECTED.values()) >= 4
    assert sum("OffsetTimeOriginal" in e for e in EXPECTED.values()) >= 1
    assert sum(e.get("Orientation", 1) != 1 for e in EXPECTED.values()) >= 2


def _jpeg_with_exif(exif: Image.Exif) -> Image.Image:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, "JPEG", exif=exif.tobytes())
    return Image.open(io.BytesIO(buf.getvalue()))


def test_out_of_range_gps_is_dropped_with_a_warning_never_stored():
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)}
    got = metadata.extract(_jpeg_with_exif(exif))
    assert "gps" not in got
    assert any(w.startswith("gps_out_of_range") for w in got["warnings"])


def test_southern_western_hemisphere_and_below_sea_level():
    exif = Image.Exif()
    exif[0x8825] = {1: "S", 2: (33.0, 51.0, 36.0), 3: "W", 4: (70.0, 30.0, 0.0), 5: b"\x01", 6: 12.5}
    got = metadata.extract(_jpeg_with_exif(exif))
    assert got["gps"] == {"lat": pytest.approx(-33.86), "lon": pytest.approx(-70.5), "alt_m": -12.5}


def test_null_island_is_treated_as_no_fix():
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)}
    got = metadata.extract(_jpeg_with_exif(exif))
    assert "gps" not in got and any("null_island" in w for w in got["warnings"])


def test_garbage_values_are_dropped_each_on_its_own():
    exif = Image.Exif()
    exif[0x010F] = "Canon\x00\x00"  # Make with NULs: cleaned
    exif[0x0112] = 42  # impossible orientation
    exif[0x8769] = {0x9003: "not a date at all", 0x829D: 0.0, 0x8827: -5}
    got = metadata.extract(_jpeg_with_exif(exif))
    assert got["camera_make"] == "Canon"
    assert got["orientation"] == 1 and any("orientation_out_of_range" in w for w in got["warnings"])
    assert "taken_at" not in got and any("DateTimeOriginal_unparseable" in w for w in got["warnings"])
    assert "f_number" not in got and "iso" not in got


def test_offset_and_subseconds():
    exif = Image.Exif()
    exif[0x8769] = {0x9003: "2021:06:01 23:30:00", 0x9011: "-04:30", 0x9291: "25"}
    got = metadata.extract(_jpeg_with_exif(exif))
    assert got["taken_at_local"] == "2021-06-01T23:30:00.250000"
    assert got["tz_offset"] == "-04:30"
    assert got["taken_at"] == datetime(2021, 6, 2, 4, 0, 0, 250000, tzinfo=timezone.utc)


def test_image_without_exif_gives_dimensions_only():
    img = Image.open(PHOTOS / "printed_page_text.png")
    got = metadata.extract(img)
    assert got == {"warnings": [], "width": img.width, "height": img.height, "orientation": 1}


def test_camera_name_does_not_repeat_the_make():
    assert metadata.camera_name("Canon", "Canon EOS 5D Mark II") == "Canon EOS 5D Mark II"
    assert metadata.camera_name("Apple", "iPhone XS") == "Apple iPhone XS"
    assert metadata.camera_name("NIKON CORPORATION", "NIKON D2H") == "NIKON D2H"
    assert metadata.camera_name(None, None) is None
