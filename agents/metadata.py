"""metadata: EXIF of the original — capture time, camera, lens, exposure, GPS, dimensions, orientation.

Runs inside preprocess on the already-opened original (no second read, no pixel decode), and is
published on ``analysis.metadata`` as its own stage result. A pure function of a Pillow image: every
field is parsed on its own, so one garbage tag never loses the others; a value that is present but
invalid (out-of-range GPS, impossible date) is dropped and named in ``warnings``, never stored.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from PIL import ExifTags, Image

MODEL = {"name": "pillow-exif", "version": "1", "sha256": None}

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
        return out
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
    return out


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
