"""Search queries are parsed strictly: one mode, a user, sane filters."""

from datetime import datetime, timezone

import pytest

from lensflow.streams.search import Query, SearchError, _haversine_km


def test_exactly_one_mode_and_a_user():
    assert Query.parse({"user": "u", "text": "a dog"}).text == "a dog"
    with pytest.raises(SearchError, match="exactly one"):
        Query.parse({"user": "u", "text": "a", "tag": "b"})
    with pytest.raises(SearchError, match="exactly one"):
        Query.parse({"user": "u"})
    with pytest.raises(SearchError, match="user"):
        Query.parse({"text": "a"})


def test_filters():
    q = Query.parse({"user": "u", "tag": "x", "taken_after": "2020-01-02", "near": "48.85,2.35,10", "limit": "500"})
    assert q.taken_after == datetime(2020, 1, 2, tzinfo=timezone.utc)
    assert q.near == (48.85, 2.35, 10.0) and q.limit == 100
    for bad in ({"near": "1,2"}, {"near": "95,0,1"}, {"taken_after": "yesterday"}, {"limit": "ten"}):
        with pytest.raises(SearchError):
            Query.parse({"user": "u", "tag": "x", **bad})


def test_haversine():
    assert _haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=1.0)  # Paris-London
