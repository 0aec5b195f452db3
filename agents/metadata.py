"""metadata: what the original says about itself — capture time, camera, lens, exposure, GPS,
dimensions, orientation (EXIF); title, description, keywords, rating, creator (EXIF, XMP, IPTC); and
the place the GPS position names (offline reverse geocoding, ``agents/geocode.py``).

Runs inside preprocess on the already-opened original (no second read, no pixel decode), and is
published on ``analysis.metadata`` as its own stage result. A pure function of a Pillow image: every
field is parsed on its own, so one garbage tag never loses the others; a value that is present but
invalid (out-of-range GPS, impossible date, an XMP packet that is not safe XML) is dropped and named
in ``warnings``, never stored, and never fails the image.

Where each block is found (all read by Pillow when the file is opened, except where noted):

* EXIF: JPEG APP1, PNG ``eXIf`` (or ImageMagick's "Raw profile type exif"), WebP ``EXIF``, TIFF IFD0.
* XMP: JPEG APP1 ``http://ns.adobe.com/xap/1.0/`` (standard XMP only: extended XMP is not joined),
  PNG iTXt ``XML:com.adobe.xmp`` (also a tEXt/zTXt of that name, and "Raw profile type xmp"), WebP
  ``XMP `` chunk, TIFF tag 700. A PNG's text chunks after its pixels (where ExifTool writes XMP) are
  only in Pillow's ``info`` once the image is loaded: when they are not, the chunk list is walked on
  the open file, seeking over the pixel data (nothing decoded).
* IPTC-IIM: JPEG APP13 Photoshop resource 0x0404, TIFF tag 33723 (or its Photoshop resources, tag
  34377), PNG "Raw profile type iptc" / "Raw profile type 8bim" text chunks.

Precedence, field by field (the first source that has a valid value wins):

* ``camera_make`` / ``camera_model``: EXIF Make / Model, then XMP ``tiff:Make`` / ``tiff:Model``.
* ``title``: EXIF XPTitle, then XMP ``dc:title`` (the ``x-default`` language, else the first), then
  IPTC 2:05 Object Name.
* ``description``: EXIF ImageDescription (unless a camera's placeholder such as "OLYMPUS DIGITAL
  CAMERA"), then XMP ``dc:description``, then IPTC 2:120 Caption/Abstract.
* ``creator``: EXIF Artist, then EXIF XPAuthor, then XMP ``dc:creator`` (a sequence, joined with
  "; "), then IPTC 2:80 By-line (repeatable, joined likewise).
* ``rating``: EXIF Rating (0x4746), then XMP ``xmp:Rating``; an integer -1..5 (-1: rejected, 0: not
  rated); anything else is a warning.
* ``keywords``: the union, in this order and without case-insensitive duplicates, of EXIF XPKeywords,
  XMP ``dc:subject`` and IPTC 2:25 Keywords (at most ``MAX_KEYWORDS`` of at most 100 characters).

Safety and bounds: XML is parsed with ``defusedxml`` with DTDs forbidden (no entity expansion, no
external entities); an XMP packet over ``MAX_XMP_BYTES`` or an IPTC block over ``MAX_IPTC_BYTES`` is
skipped with a warning; titles and creators are cut to 200 characters, descriptions to 2,000.

``place`` (city, region, country, ISO country code, distance) is looked up for the GPS position in
GeoNames' places of 1,000+ people; none farther than ``geocode.MAX_DISTANCE_KM``.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from datetime import datetime, timedelta, timezone
from typing import Any

from PIL import ExifTags, Image

from lensflow.streams.avro_types import GeoPoint, ModelRef, Place

from . import geocode

MODEL = ModelRef(name="pillow-exif", version="2", sha256=None)

MAX_XMP_BYTES = 1 << 20  # Lightroom/Photoshop packets with history run to a few 100 kB
MAX_IPTC_BYTES = 256 << 10
MAX_KEYWORDS = 100
TITLE_CHARS, DESCRIPTION_CHARS, KEYWORD_CHARS = 200, 2000, 100

T = ExifTags.Base
G = ExifTags.GPS

_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^\s*([+-])(\d{2}):?(\d{2})\s*$")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).replace("\x00", "").strip()
    text = "".join(ch for ch in text if ch.isprintable())
    return text[:200] or None


def _num(value: Any) -> float | None:
    """EXIF rationals (IFDRational, (num, den) tuples) and plain numbers to float; None if invalid."""
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2:
        num, den = value
        value = float(num) / float(den) if den else math.nan
    try:
        x = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return x if math.isfinite(x) else None


def parse_offset(value: Any) -> timedelta | None:
    m = _OFFSET.match(_text(value) or "")
    if not m:
        return None
    sign = -1 if m.group(1) == "-" else 1
    hours, minutes = int(m.group(2)), int(m.group(3))
    if hours > 14 or minutes >= 60:
        return None
    return sign * timedelta(hours=hours, minutes=minutes)


def parse_datetime(value: Any, subsec: Any = None) -> datetime | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' (with optional sub-seconds) as a naive wall-clock datetime."""
    m = _DATE.match(_text(value) or "")
    if not m:
        return None
    try:
        dt = datetime(*(int(g) for g in m.groups()))
    except ValueError:
        return None
    if not 1826 <= dt.year <= 2200:  # before photography, or far future: garbage
        return None
    digits = re.sub(r"\D", "", _text(subsec) or "")[:6]
    if digits:
        dt = dt.replace(microsecond=int(digits.ljust(6, "0")))
    return dt


def _gps_coord(value: Any, ref: Any, positive: str, negative: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 3:
        d, m, s = (_num(v) for v in value)
        if d is None or m is None or s is None:
            return None
        deg = d + m / 60.0 + s / 3600.0
    else:
        deg = _num(value)
        if deg is None:
            return None
    ref_s = (_text(ref) or positive).upper()[:1]
    if ref_s == negative:
        deg = -deg
    elif ref_s != positive:
        return None
    return deg


def extract(img: Image.Image) -> dict:
    """MetadataResult fields (without the common envelope) of an opened image."""
    out: dict[str, Any] = {"warnings": [], "width": img.width, "height": img.height, "orientation": 1}
    warn = out["warnings"].append
    try:
        exif = img.getexif()
    except Exception as exc:  # corrupt EXIF block: keep the image, report it
        warn(f"exif_unreadable: {type(exc).__name__}")
        exif = None
    if exif is not None:
        _exif_fields(exif, out, warn)
    _descriptive(img, exif, out, warn)
    if "gps" in out:
        try:
            place = geocode.place_of(out["gps"]["lat"], out["gps"]["lon"])
        except geocode.GeocodeUnavailable as exc:
            warn(f"place_unavailable: {exc}")
        except Exception as exc:  # never the image's fault: say so, keep the rest
            warn(f"place_failed: {type(exc).__name__}")
        else:
            if place is not None:
                out["place"] = place
    return out


def record_fields(md: dict) -> dict:
    """``extract``'s fields as the MetadataResult takes them: its position a ``GeoPoint``, its place a ``Place``."""
    out = dict(md)
    if out.get("gps") is not None:
        out["gps"] = GeoPoint(**out["gps"])
    if out.get("place") is not None:
        out["place"] = Place(**out["place"])
    return out


def _exif_fields(exif: Image.Exif, out: dict, warn) -> None:
    try:
        ifd = exif.get_ifd(ExifTags.IFD.Exif)
    except Exception:
        ifd = {}
        warn("exif_ifd_unreadable")
    try:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:
        gps = {}
        warn("gps_ifd_unreadable")

    def tag(name: str, *sources: dict) -> Any:  # Exif sub-IFD first, then IFD0 (some TIFFs keep EXIF there)
        key = T[name].value
        for src in sources:
            try:
                if key in src:
                    return src[key]
            except Exception:
                return None
        return None

    orientation = tag("Orientation", exif)
    if orientation is not None:
        try:
            o = int(orientation)
            if 1 <= o <= 8:
                out["orientation"] = o
            else:
                warn(f"orientation_out_of_range: {o}")
        except (TypeError, ValueError):
            warn("orientation_unparseable")

    for field, name in [("camera_make", "Make"), ("camera_model", "Model"), ("lens_make", "LensMake"),
                        ("lens_model", "LensModel"), ("software", "Software")]:
        value = _text(tag(name, exif, ifd))
        if value:
            out[field] = value

    # capture time: DateTimeOriginal, else DateTimeDigitized, else IFD0 DateTime
    for dt_name, off_name, sub_name in [("DateTimeOriginal", "OffsetTimeOriginal", "SubsecTimeOriginal"),
                                        ("DateTimeDigitized", "OffsetTimeDigitized", "SubsecTimeDigitized"),
                                        ("DateTime", "OffsetTime", "SubsecTime")]:
        raw = tag(dt_name, ifd, exif)
        if raw is None:
            continue
        local = parse_datetime(raw, tag(sub_name, ifd, exif))
        if local is None:
            warn(f"{dt_name}_unparseable: {_text(raw)!r}")
            continue
        out["taken_at_local"] = local.isoformat()
        offset = parse_offset(tag(off_name, ifd, exif))
        if offset is not None:
            out["tz_offset"] = _format_offset(offset)
            out["taken_at"] = (local - offset).replace(tzinfo=timezone.utc)
        else:
            out["taken_at"] = local.replace(tzinfo=timezone.utc)
        break

    exposure = _num(tag("ExposureTime", ifd, exif))
    if exposure is not None and 0 < exposure < 3600:
        out["exposure_time_s"] = exposure
    fnum = _num(tag("FNumber", ifd, exif))
    if fnum is not None and 0.5 <= fnum <= 128:
        out["f_number"] = round(fnum, 2)
    iso = tag("ISOSpeedRatings", ifd, exif)
    if isinstance(iso, (tuple, list)):
        iso = iso[0] if iso else None
    iso_n = _num(iso)
    if iso_n is not None and 0 < iso_n < 10_000_000:
        out["iso"] = int(iso_n)
    focal = _num(tag("FocalLength", ifd, exif))
    if focal is not None and 0 < focal < 10_000:
        out["focal_length_mm"] = round(focal, 2)
    f35 = _num(tag("FocalLengthIn35mmFilm", ifd, exif))
    if f35 is not None and 0 < f35 < 10_000:
        out["focal_length_35mm"] = int(f35)

    if gps:
        out_gps = _gps(gps, warn)
        if out_gps:
            out["gps"] = out_gps


def _format_offset(offset: timedelta) -> str:
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _gps(gps: dict, warn) -> dict | None:
    try:
        lat = _gps_coord(gps.get(G.GPSLatitude), gps.get(G.GPSLatitudeRef), "N", "S")
        lon = _gps_coord(gps.get(G.GPSLongitude), gps.get(G.GPSLongitudeRef), "E", "W")
    except Exception:
        warn("gps_unparseable")
        return None
    if lat is None or lon is None:
        if G.GPSLatitude in gps or G.GPSLongitude in gps:
            warn("gps_unparseable")
        return None
    if not (-90.0 <= lat <= 90.0) or not (-180.0 <= lon <= 180.0):
        warn(f"gps_out_of_range: {lat:.6f},{lon:.6f}")
        return None
    if lat == 0.0 and lon == 0.0:
        warn("gps_null_island: 0,0 is what receivers write without a fix")
        return None
    point: dict[str, Any] = {"lat": round(lat, 7), "lon": round(lon, 7), "alt_m": None}
    alt = _num(gps.get(G.GPSAltitude))
    if alt is not None:
        ref = gps.get(G.GPSAltitudeRef)
        if isinstance(ref, bytes):
            ref = ref[:1] and ref[0]
        if ref in (1, "1"):
            alt = -alt
        if -1000.0 <= alt <= 20000.0:
            point["alt_m"] = round(alt, 2)
        else:
            warn(f"gps_altitude_out_of_range: {alt}")
    return point


def camera_name(make: str | None, model: str | None) -> str | None:
    """'Canon' + 'Canon EOS 5D' -> 'Canon EOS 5D'; 'Apple' + 'iPhone XS' -> 'Apple iPhone XS'."""
    if model and make and model.lower().startswith(make.split()[0].lower()):
        return model
    return " ".join(x for x in (make, model) if x) or None


# --------------------------------------------------------------------------------------------------
# title, description, keywords, rating, creator: EXIF, then XMP, then IPTC

_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_XMP_PROPS = {  # (namespace, local name) -> key
    ("http://purl.org/dc/elements/1.1/", "title"): "title",
    ("http://purl.org/dc/elements/1.1/", "description"): "description",
    ("http://purl.org/dc/elements/1.1/", "subject"): "keywords",
    ("http://purl.org/dc/elements/1.1/", "creator"): "creator",
    ("http://ns.adobe.com/xap/1.0/", "Rating"): "rating",
    ("http://ns.adobe.com/tiff/1.0/", "Make"): "make",
    ("http://ns.adobe.com/tiff/1.0/", "Model"): "model",
}
_XMP_KEYS = {f"{{{ns}}}{name}": key for (ns, name), key in _XMP_PROPS.items()}
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
# what cameras write into ImageDescription when the user wrote nothing
_PLACEHOLDERS = {"olympus digital camera", "sony dsc", "digital camera", "exif_jpeg_picture", "default",
                 "kodak digital still camera", "minolta digital camera", "samsung digital camera", "image",
                 "lg digital camera", "camera", "dcim", "picture", "photo", "untitled", "sdim", "jpeg", "jpg"}
_PNG_TEXT_KEYS = (b"XML:com.adobe.xmp", b"Raw profile type xmp", b"Raw profile type iptc", b"Raw profile type 8bim")


def _clean(value: Any, limit: int) -> str | None:
    """Free text: control characters out, whitespace runs (newlines included) as one space, cut."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)[: limit * 4]
    text = "".join(ch if ch.isprintable() else " " for ch in text.replace("\x00", ""))
    text = " ".join(text.split())
    return text[:limit].rstrip() or None


def _utf16(value: Any) -> str | None:
    """Windows XP* tags: UCS-2 little-endian bytes (Pillow gives bytes or a tuple of ints)."""
    if isinstance(value, (tuple, list)):
        value = bytes(int(v) & 0xFF for v in value)
    if not isinstance(value, bytes):
        return _clean(value, DESCRIPTION_CHARS)
    return value.decode("utf-16-le", "replace").split("\x00", 1)[0]


def _rating(value: Any, warn, source: str) -> int | None:
    x = _num(_text(value) if isinstance(value, (str, bytes)) else value)
    if x is None:
        warn(f"{source}_rating_unparseable: {_text(value)!r}")
        return None
    r = int(round(x))
    if not -1 <= r <= 5:
        warn(f"{source}_rating_out_of_range: {_text(value)}")
        return None
    return r


def _descriptive(img: Image.Image, exif: Image.Exif | None, out: dict, warn) -> None:
    found: dict[str, list] = {k: [] for k in ("title", "description", "creator", "rating", "make", "model")}
    keywords: list[str] = []

    if exif is not None:
        def ifd0(tag: int) -> Any:
            try:
                return exif.get(tag)
            except Exception:
                return None

        desc = _clean(ifd0(T.ImageDescription.value), DESCRIPTION_CHARS)
        if desc and desc.casefold() not in _PLACEHOLDERS and desc not in (out.get("camera_make"), out.get("camera_model")):
            found["description"].append(desc)
        for tag in (T.Artist.value, T.XPAuthor.value):
            value = ifd0(tag)
            value = _utf16(value) if tag == T.XPAuthor.value and value is not None else value
            creator = _clean(value, TITLE_CHARS)
            if creator:
                found["creator"].append(creator)
        title = ifd0(T.XPTitle.value)
        if title is not None:
            title = _clean(_utf16(title), TITLE_CHARS)
            if title:
                found["title"].append(title)
        kw = ifd0(T.XPKeywords.value)
        if kw is not None:
            keywords.extend((_utf16(kw) or "").split(";"))
        rating = ifd0(T.Rating.value)
        if rating is not None:
            r = _rating(rating, warn, "exif")
            if r is not None:
                found["rating"].append(r)

    tail_cache: list[dict[bytes, bytes]] = []

    def tail() -> dict[bytes, bytes]:  # a PNG's chunk list is walked at most once
        if not tail_cache:
            tail_cache.append(_png_text_chunks(img, warn))
        return tail_cache[0]

    for packet in _xmp_packets(img, tail, warn):
        props = _parse_xmp(packet, warn)
        for key in ("title", "description", "creator", "make", "model"):
            if props.get(key):
                found[key].append(props[key])
        if "rating" in props:
            r = _rating(props["rating"], warn, "xmp")
            if r is not None:
                found["rating"].append(r)
        keywords.extend(props.get("keywords", []))

    for block in _iptc_blocks(img, tail, warn):
        iim = _parse_iim(block, warn)
        for key, dataset, limit in (("title", 5, TITLE_CHARS), ("description", 120, DESCRIPTION_CHARS)):
            value = _clean(iim.get(dataset, [None])[0], limit)
            if value:
                found[key].append(value)
        bylines = [c for c in (_clean(v, TITLE_CHARS) for v in iim.get(80, [])) if c]
        if bylines:
            found["creator"].append(_clean("; ".join(bylines), TITLE_CHARS))
        keywords.extend(iim.get(25, []))

    if "camera_make" not in out and found["make"]:
        out["camera_make"] = found["make"][0]
    if "camera_model" not in out and found["model"]:
        out["camera_model"] = found["model"][0]
    for key in ("title", "description", "creator", "rating"):
        if found[key]:
            out[key] = found[key][0]
    seen: set[str] = set()
    unique = []
    for k in keywords:
        k = _clean(k, KEYWORD_CHARS)
        if k and k.casefold() not in seen:
            seen.add(k.casefold())
            unique.append(k)
    if len(unique) > MAX_KEYWORDS:
        warn(f"keywords_truncated: {len(unique)} > {MAX_KEYWORDS}")
        unique = unique[:MAX_KEYWORDS]
    if unique:
        out["keywords"] = unique


# ---- XMP


def _as_bytes(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, (tuple, list)):  # a TIFF BYTE/UNDEFINED tag read as integers
        try:
            return bytes(value)
        except (TypeError, ValueError):
            return None
    return None


def _xmp_packets(img: Image.Image, png_tail, warn) -> list[bytes]:
    """The XMP packet of the file (at most one: the first place that has one)."""
    info = getattr(img, "info", {}) or {}
    candidates = [info.get("xmp"), info.get("XML:com.adobe.xmp")]
    raw_profile = info.get("Raw profile type xmp")
    if raw_profile is not None:
        candidates.append(_raw_profile(raw_profile, warn))
    if img.format == "PNG" and not any(candidates):
        tail = png_tail()
        candidates += [tail.get(b"XML:com.adobe.xmp")]
        if b"Raw profile type xmp" in tail:
            candidates.append(_raw_profile(tail[b"Raw profile type xmp"], warn))
    for c in candidates:
        data = _as_bytes(c)
        if data:
            return [data]
    return []


def _parse_xmp(packet: bytes, warn) -> dict:
    """The properties of ``_XMP_PROPS`` found anywhere in an XMP packet; {} (and a warning) when the
    packet is too large, holds a DTD, or is not well-formed XML."""
    if len(packet) > MAX_XMP_BYTES:
        warn(f"xmp_too_large: {len(packet)} bytes > {MAX_XMP_BYTES}")
        return {}
    packet = packet.strip(b"\x00 \t\r\n")
    start = packet.find(b"<")
    if start < 0:
        warn("xmp_unparseable: no XML")
        return {}
    packet = packet[start:]
    if _DOCTYPE.search(packet):  # checked before parsing, whatever the parser (defusedxml refuses them too)
        warn("xmp_unparseable: DTD or entity declaration refused")
        return {}
    try:
        from defusedxml import ElementTree as SafeET
    except ImportError:  # a deployment without the dependency: XMP is skipped, never parsed unsafely
        warn("xmp_skipped: defusedxml is not installed")
        return {}
    try:
        root = SafeET.fromstring(packet, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except Exception as exc:  # ParseError, DefusedXmlException, encoding errors: all the file's fault
        warn(f"xmp_unparseable: {type(exc).__name__}")
        return {}
    props: dict[str, Any] = {}
    try:
        for el in root.iter():
            if not isinstance(el.tag, str):
                continue
            # simple properties written as attributes of rdf:Description
            for name, value in el.attrib.items():
                key = _XMP_KEYS.get(name)
                if key and key not in props:
                    props[key] = _xmp_value(key, value, [])
            key = _XMP_KEYS.get(el.tag)
            if key and key not in props:
                items = [li for li in el.iter(f"{{{_RDF}}}li")]
                props[key] = _xmp_value(key, el.text, items)
    except Exception as exc:  # defensive: a shape no writer produces
        warn(f"xmp_unparseable: {type(exc).__name__}")
        return {}
    return {k: v for k, v in props.items() if v not in (None, [], "")}


def _xmp_value(key: str, text: str | None, items: list) -> Any:
    """A property's value: rdf:Alt (language alternatives), rdf:Bag / rdf:Seq (lists) or plain text."""
    if key == "keywords":
        return [t for t in ((li.text or "") for li in items) if t.strip()] if items else ([text] if text and text.strip() else [])
    if key == "creator":
        names = [c for c in (_clean(li.text, TITLE_CHARS) for li in items) if c] if items else [_clean(text, TITLE_CHARS)]
        return _clean("; ".join(n for n in names if n), TITLE_CHARS)
    if items:  # Alt: x-default first, else the first non-empty
        default = [li for li in items if li.get(_XML_LANG, "").lower() == "x-default" and (li.text or "").strip()]
        chosen = default or [li for li in items if (li.text or "").strip()]
        text = chosen[0].text if chosen else None
    if key == "description":
        return _clean(text, DESCRIPTION_CHARS)
    if key in ("make", "model"):
        return _text(text)
    if key == "rating":
        return text.strip() if text and text.strip() else None
    return _clean(text, TITLE_CHARS)


# ---- IPTC-IIM


def _iptc_blocks(img: Image.Image, png_tail, warn) -> list[bytes]:
    info = getattr(img, "info", {}) or {}
    blocks: list[Any] = []
    photoshop = info.get("photoshop")
    if isinstance(photoshop, dict):  # JPEG APP13, parsed by Pillow
        blocks.append(photoshop.get(0x0404))
    if img.format == "TIFF":
        try:
            iptc = img.tag_v2.get(33723)
            if isinstance(iptc, (tuple, list)) and any(int(v) > 255 for v in iptc):
                # written as LONGs (some writers do): the bytes again, in the file's byte order
                iptc = struct.pack(f"{getattr(img.tag_v2, '_endian', '<')}{len(iptc)}L", *(int(v) for v in iptc))
            blocks.append(iptc)
        except Exception:
            warn("iptc_unreadable: TIFF tag 33723")
        if not any(blocks):
            try:
                blocks.append((img.get_photoshop_blocks().get(0x0404) or {}).get("data"))
            except Exception:
                warn("iptc_unreadable: TIFF Photoshop resources")
    if img.format == "PNG":
        texts = {k: info.get(k) for k in ("Raw profile type iptc", "Raw profile type 8bim") if info.get(k)}
        if not texts:
            tail = png_tail()
            texts = {k.decode(): tail[k] for k in (b"Raw profile type iptc", b"Raw profile type 8bim") if k in tail}
        for value in texts.values():
            data = _raw_profile(value, warn)
            if data and data.startswith(b"8BIM"):
                data = _irb(data).get(0x0404)
            blocks.append(data)
    out = []
    for b in blocks:
        data = _as_bytes(b)
        if not data:
            continue
        if len(data) > MAX_IPTC_BYTES:
            warn(f"iptc_too_large: {len(data)} bytes > {MAX_IPTC_BYTES}")
            continue
        out.append(data)
        break  # the first block found is the file's IPTC
    return out


def _irb(data: bytes) -> dict[int, bytes]:
    """Photoshop image resource blocks ('8BIM', id, Pascal name padded even, size, data padded even)."""
    out: dict[int, bytes] = {}
    i = 0
    while i + 12 <= len(data) and data[i:i + 4] == b"8BIM":
        rid = int.from_bytes(data[i + 4:i + 6], "big")
        name_len = data[i + 6]
        i += 7 + name_len
        i += i & 1
        if i + 4 > len(data):
            break
        size = int.from_bytes(data[i:i + 4], "big")
        i += 4
        out.setdefault(rid, data[i:i + size])
        i += size + (size & 1)
    return out


def _parse_iim(data: bytes, warn) -> dict[int, list[str]]:
    """Record 2 (application) datasets of an IPTC-IIM block as text, by dataset number; each dataset
    read on its own, a truncated or malformed tail ends the block with a warning."""
    raw: dict[tuple[int, int], list[bytes]] = {}
    i = 0
    while i < len(data):
        if data[i] != 0x1C:
            if data[i:].strip(b"\x00"):  # anything but padding
                warn("iptc_unparseable: bad tag marker")
            break
        if i + 5 > len(data):
            warn("iptc_unparseable: truncated")
            break
        rec, ds, n = data[i + 1], data[i + 2], int.from_bytes(data[i + 3:i + 5], "big")
        i += 5
        if n & 0x8000:  # extended dataset: the length of the length
            k = n & 0x7FFF
            if not 0 < k <= 4 or i + k > len(data):
                warn("iptc_unparseable: bad extended length")
                break
            n = int.from_bytes(data[i:i + k], "big")
            i += k
        if i + n > len(data):
            warn("iptc_unparseable: truncated")
            break
        raw.setdefault((rec, ds), []).append(data[i:i + n])
        i += n
    utf8 = b"\x1b%G" in raw.get((1, 90), [b""])[0]
    out: dict[int, list[str]] = {}
    for (rec, ds), values in raw.items():
        if rec != 2 or ds not in (5, 25, 80, 120):
            continue
        for v in values[:1000]:
            try:
                text = v.decode("utf-8")
            except UnicodeDecodeError:
                text = v.decode("utf-8" if utf8 else "cp1252", "replace")
            out.setdefault(ds, []).append(text)
    return out


# ---- PNG text chunks after the pixels, and ImageMagick's raw profiles


def _raw_profile(value: Any, warn) -> bytes | None:
    """ImageMagick/ExifTool 'Raw profile type NAME': '\\nNAME\\n   LENGTH\\nHEX…' (hex in lines)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    parts = text.lstrip("\n").split("\n", 2)
    if len(parts) < 3:
        warn("raw_profile_unparseable")
        return None
    try:
        length = int(parts[1].strip())
        if length > 4 * MAX_XMP_BYTES:
            warn(f"raw_profile_too_large: {length} bytes")
            return None
        data = bytes.fromhex("".join(parts[2].split()))
    except ValueError:
        warn("raw_profile_unparseable")
        return None
    return data[:length]


def _png_text_chunks(img: Image.Image, warn) -> dict[bytes, bytes]:
    """Metadata text chunks of a PNG read from its open file without decoding anything: the chunk
    list is walked from the signature, seeking over every other chunk (IDAT included). Needed for
    chunks after the pixel data, which Pillow only reads when the image is loaded."""
    fp = getattr(img, "fp", None)
    if fp is None or not hasattr(fp, "seek") or getattr(img, "_im", None) is not None:
        return {}  # closed, or loaded: then Pillow has read every chunk into info already
    found: dict[bytes, bytes] = {}
    try:
        pos = fp.tell()
    except Exception:
        return {}
    limit = 4 * MAX_XMP_BYTES + 64  # hex raw profiles are twice their data
    try:
        fp.seek(8)
        for _ in range(100_000):
            head = fp.read(8)
            if len(head) < 8:
                break
            n, ctype = int.from_bytes(head[:4], "big"), head[4:]
            if ctype == b"IEND":
                break
            if ctype in (b"tEXt", b"zTXt", b"iTXt"):
                if n > limit:
                    warn(f"png_text_too_large: {n} bytes")
                    fp.seek(n + 4, 1)
                    continue
                body = fp.read(n)
                fp.seek(4, 1)
                key, _, rest = body.partition(b"\x00")
                if key not in _PNG_TEXT_KEYS or key in found:
                    continue
                value = _png_text_value(ctype, rest, limit)
                if value is None:
                    warn(f"png_text_unparseable: {key.decode('latin-1')}")
                else:
                    found[key] = value
            else:
                fp.seek(n + 4, 1)
    except Exception as exc:
        warn(f"png_chunks_unreadable: {type(exc).__name__}")
    finally:
        try:
            fp.seek(pos)
        except Exception:
            pass
    return found


def _inflate(data: bytes, limit: int) -> bytes | None:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error:
        return None
    return None if len(out) > limit else out


def _png_text_value(ctype: bytes, rest: bytes, limit: int) -> bytes | None:
    if ctype == b"tEXt":
        return rest
    if ctype == b"zTXt":
        return _inflate(rest[1:], limit) if rest[:1] == b"\x00" else None
    # iTXt: compression flag, method, language\0, translated keyword\0, text
    if len(rest) < 2:
        return None
    flag, method, tail = rest[0], rest[1], rest[2:]
    parts = tail.split(b"\x00", 2)
    if len(parts) < 3:
        return None
    text = parts[2]
    if flag:
        return _inflate(text, limit) if method == 0 else None
    return text
