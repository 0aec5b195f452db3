"""Search queries are parsed strictly: one mode, a user, sane filters."""

from datetime import datetime, timezone

import pytest

from lensflow.streams.geo import haversine_km as _haversine_km
from lensflow.streams.search import Query, SearchError


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


def test_query_words_drop_stopwords_and_repeats():
    from lensflow.streams.search import query_words

    assert query_words("A photo of the Rocket, rocket launch!") == ["rocket", "launch"]


def test_rank_fusion_lets_an_exact_word_win():
    from lensflow.streams.search import fuse

    semantic = [{"image_id": i, "score": s, "taken_at": None, "tags": []} for i, s in [("a", 0.5), ("b", 0.4), ("c", 0.3)]]
    keyword = [{"image_id": "c", "matches": 1}, {"image_id": "d", "matches": 1}]
    ranked = fuse(semantic, keyword, 10)
    assert [h["image_id"] for h in ranked] == ["c", "a", "d", "b"]  # in both lists beats first in one
    assert ranked[0]["keyword_matches"] == 1 and ranked[0]["semantic_score"] == 0.3
    assert ranked[2]["semantic_score"] is None
    assert [h["image_id"] for h in fuse(semantic, [], 2)] == ["a", "b"]  # no keyword hit: the semantic order


def test_text_search_finds_a_printed_word_on_a_real_qdrant(tmp_path):
    """Keyword half against Qdrant's local mode (its MatchText is a substring test: whole words are
    checked here, so "car" does not find "cardigan")."""
    from qdrant_client import models as m

    from lensflow.streams.search import SearchService
    from lensflow.streams.store import IMAGE_VECTORS, QdrantStore

    store = QdrantStore(None, tmp_path / "qdrant")
    far = {name: [0.0, 1.0] + [0.0] * (dim - 2) for name, dim in IMAGE_VECTORS.items()}
    near = {name: [1.0] + [0.0] * (dim - 1) for name, dim in IMAGE_VECTORS.items()}
    points = [(1, "page", far, "region-based segmentation markers of the coins"), (2, "cat", near, "a cat indoors cat"),
              (3, "knit", near, "a person in a cardigan"), (4, "other", near, "a dog"),
              (5, "theirs", far, "region-based segmentation")]
    store.run(lambda c: c.upsert("images", points=[
        m.PointStruct(id=i, vector=v, payload={"user_id": "bob" if name == "theirs" else "u", "image_id": name, "keywords": kw})
        for i, name, v, kw in points]))

    class Stores:
        qdrant = store

    class Settings:
        safety_threshold = 0.5

    service = SearchService(Stores(), Settings(), embedder_factory=lambda: type("E", (), {"predict": lambda self, t: [near["semantic"]]})())
    hits = service._text_search(Query.parse({"user": "u", "text": "segmentation"}))
    assert hits[0]["image_id"] == "page" and hits[0]["keyword_matches"] == 1  # semantically far, found by its word
    assert "theirs" not in [h["image_id"] for h in hits]  # never another user's
    car = service._text_search(Query.parse({"user": "u", "text": "car"}))
    assert all(h["keyword_matches"] == 0 for h in car)  # "cardigan" is not "car"


@pytest.mark.parametrize("near", ["1,2,inf", "1,2,1e999", "inf,2,3", "1,-inf,3", "1,2,nan", "nan,2,3"])
def test_near_must_be_finite(near):
    with pytest.raises(SearchError, match="near"):
        Query.parse({"user": "u", "tag": "x", "near": near})


def test_unknown_parameters_and_unsafe_users_are_refused():
    # a misspelt filter would otherwise be dropped silently and the answer unfiltered
    with pytest.raises(SearchError, match="taken_afer"):
        Query.parse({"user": "u", "tag": "x", "taken_afer": "2020-01-01"})
    for user in ("../bob", "a b", "x" * 65):
        with pytest.raises(SearchError, match="user"):
            Query.parse({"user": user, "tag": "x"})


def test_a_tag_search_holds_only_the_newest_it_answers():
    """A tag on many images: the rows are streamed and only the newest ``limit`` kept, and at most
    TAG_SCAN_LIMIT index rows are read (it loaded every matching row before)."""
    from collections import namedtuple
    from datetime import datetime, timedelta

    from lensflow.streams import search as search_module
    from lensflow.streams.search import SearchService

    Row = namedtuple("Row", "image_id kind score taken_at")
    read = {"rows": 0}

    def rows(n):
        t0 = datetime(2020, 1, 1)
        for i in range(n):
            read["rows"] += 1
            yield Row(f"img{i:06d}", "object", 0.9, t0 + timedelta(minutes=(i * 7919) % n))

    class Cassandra:
        def images_tagged(self, user, tag):
            return rows(200_000)

    class Stores:
        cassandra = Cassandra()

    service = SearchService(Stores(), type("S", (), {"safety_threshold": 0.5})())
    hits = service._tag_search(Query.parse({"user": "u", "tag": "dog", "limit": "5"}))
    scanned = search_module.TAG_SCAN_LIMIT
    assert read["rows"] == scanned + 1, "the scan stops at TAG_SCAN_LIMIT rows"
    newest = sorted((((i * 7919) % 200_000, f"img{i:06d}") for i in range(scanned)), reverse=True)[:5]
    assert [h["image_id"] for h in hits] == [image for _, image in newest]
