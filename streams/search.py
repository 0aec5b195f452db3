"""Search over a user's analysed images: by text, by example, by tag, by person, with time and place
filters. Never returns another user's images: every query is filtered by ``user_id``.

Served by the read service (``GET /v1/search``, ``api/``), which runs the query's embedding
(``embed``) on its model thread and the store calls (``page``) on its store threads, never on an
event loop. ``SearchService`` is synchronous.

* ``text``: two rankings fused by reciprocal rank (RRF, k = 60): all-MiniLM-L6-v2 of the query
  against the ``semantic`` named vector (caption, tags, place, OCR text and people, written by the
  describe stage), and keyword matches of the query's words in the image's ``keywords`` (caption,
  tags, OCR text, title, description, keywords, place; whole words, ranked by how many of the query's
  words they hold). A word printed in a photo, or a tag, finds it even when the sentence embedding
  of a one-word query does not; each hit says its ``semantic_score`` and ``keyword_matches``;
* ``like``: the ``visual`` vector of one of the user's images against everyone else's;
* ``tag`` / ``person``: Cassandra ``user_images_by_tag`` (a person is found by name, and by the
  ids of every face cluster carrying that name);
* ``taken_after`` / ``near``: Qdrant payload filters (datetime range, geo radius) for vector
  queries, the same checks on stored rows for tag queries;
* ``safe``: only images the safety stage scored below ``LENSFLOW_SAFETY_THRESHOLD`` (an image it
  never scored is left out too: unknown is not safe), a Qdrant range filter on ``nsfw_score`` for
  vector queries, the stored ``images.nsfw_score`` for tag queries.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import heapq
import json
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

from qdrant_client import models as m

from .errors import StageFailure
from .geo import haversine_km
from .records import check_user_id, point_id


class SearchError(ValueError):
    """A bad query: one clear line for the user."""


class SearchNotFound(SearchError):
    """The query names an image that is not the user's (or does not exist): not found, either way."""


#: Index rows a tag or person search reads at most (the newest ``limit`` of them are answered).
TAG_SCAN_LIMIT = 50_000
#: With ``near``, tag hits kept per answer wanted, before the place filter.
NEAR_POOL = 20
#: Pages of 1,000 faces read to find the person ids behind a name.
PERSON_SCROLL_PAGES = 20
#: the parameters of a query (anything else is refused: a misspelt filter would be dropped silently)
PARAMETERS = ("user", "text", "like", "tag", "person", "taken_after", "near", "limit", "safe", "cursor")
#: Paging a text search: both rankings are read this deep on every page (the same pools whatever the
#: page, so the fused order is the same from page to page: no repeat, no gap), and no deeper.
TEXT_POOL = 300
#: Query embeddings kept (LRU): each page of a text search embeds the same text again, and users repeat
#: queries; a 384-d embedding is ~3 KiB, so this is ~3 MiB at most.
EMBED_CACHE = 1_024
#: Seconds a text or like search's ranking (and a person's tags) is kept: the next pages of a search read
#: it instead of ranking the whole pool again, and page over one snapshot (an image analysed meanwhile
#: shifts no page); a new search sees new images after at most this long.
RANKING_TTL_S = 30.0
#: Rankings kept at most (LRU).
RANKINGS_KEPT = 256
#: How deep a ``like`` ranking is read at once (its later pages come from it).
LIKE_POOL = 200
#: Paging a ``like`` search: results beyond this rank are not served (Qdrant reads offset + limit).
MAX_VECTOR_OFFSET = 1_000


class SearchPage(NamedTuple):
    results: list[dict]
    next_cursor: str | None


@dataclass
class Query:
    user: str
    text: str | None = None
    like: str | None = None
    tag: str | None = None
    person: str | None = None
    taken_after: datetime | None = None
    near: tuple[float, float, float] | None = None  # lat, lon, km
    limit: int = 10
    safe: bool = False
    cursor: str | None = None

    @property
    def mode(self) -> str:
        return next(k for k in ("text", "like", "tag", "person") if getattr(self, k))

    def fingerprint(self) -> str:
        """What a cursor is bound to: the user and the query, not the page size."""
        key = json.dumps([self.user, self.mode, getattr(self, self.mode), self.taken_after.isoformat() if self.taken_after else None,
                          self.near, self.safe])
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def make_cursor(self, position: dict) -> str:
        """An opaque cursor for the page after ``position`` (base64url JSON bound to this query)."""
        raw = json.dumps({"q": self.fingerprint(), **position}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def position(self) -> dict:
        """The decoded cursor ({} for the first page); SearchError when it is not one of this query's."""
        if not self.cursor:
            return {}
        try:
            raw = base64.urlsafe_b64decode(self.cursor + "=" * (-len(self.cursor) % 4))
            position = json.loads(raw)
        except (ValueError, TypeError):
            raise SearchError("cursor: not a cursor of this service (pass next_cursor as it was given)") from None
        if not isinstance(position, dict) or position.pop("q", None) != self.fingerprint():
            raise SearchError("cursor: it belongs to another query (a cursor only pages the query that gave it)")
        return position

    @classmethod
    def parse(cls, params: dict[str, str]) -> "Query":
        unknown = sorted(k for k in params if k not in PARAMETERS)
        if unknown:
            raise SearchError(f"unknown parameter(s) {', '.join(repr(k)[:40] for k in unknown[:5])}; "
                              f"known: {', '.join(PARAMETERS)}")
        user = (params.get("user") or "").strip()
        if not user:
            raise SearchError("a user is required")
        try:
            check_user_id(user)
        except StageFailure as exc:
            raise SearchError(f"user: {exc.message}") from None
        modes = [k for k in ("text", "like", "tag", "person") if params.get(k)]
        if len(modes) != 1:
            raise SearchError("give exactly one of text, like, tag, person")
        taken_after = None
        if params.get("taken_after"):
            try:
                taken_after = datetime.fromisoformat(params["taken_after"])
            except ValueError:
                raise SearchError(f"taken_after: not an ISO date: {params['taken_after']!r}") from None
            if taken_after.tzinfo is None:
                taken_after = taken_after.replace(tzinfo=timezone.utc)
        near = None
        if params.get("near"):
            try:
                lat, lon, km = (float(x) for x in params["near"].split(","))
            except ValueError:
                raise SearchError("near: expected LAT,LON,KM") from None
            if not (all(map(math.isfinite, (lat, lon, km))) and -90 <= lat <= 90 and -180 <= lon <= 180 and km > 0):
                raise SearchError("near: latitude -90..90, longitude -180..180, radius > 0 km (finite numbers)")
            near = (lat, lon, km)
        try:
            limit = int(params.get("limit") or 10)
        except ValueError:
            raise SearchError("limit: expected a number") from None
        safe = (params.get("safe") or "").strip().lower()
        if safe not in ("", "0", "1", "true", "false"):
            raise SearchError(f"safe: expected true or false, not {params['safe']!r}")
        cursor = (params.get("cursor") or "").strip() or None
        if cursor is not None and len(cursor) > 512:
            raise SearchError("cursor: too long (pass next_cursor as it was given)")
        q = cls(user=user, text=params.get("text"), like=params.get("like"), tag=params.get("tag"),
                person=params.get("person"), taken_after=taken_after, near=near, limit=max(1, min(limit, 100)),
                safe=safe in ("1", "true"), cursor=cursor)
        q.position()  # a bad cursor is a bad query: refused before any store is asked
        return q


WORD = re.compile(r"\w+", re.UNICODE)
#: Words too common to say anything about an image.
STOPWORDS = frozenset("a an the of in on at to and or with for by from is are was photo picture image".split())
#: Reciprocal rank fusion's constant (Cormack et al. 2009): a rank r counts 1 / (RRF_K + r).
RRF_K = 60


def query_words(text: str) -> list[str]:
    return list(dict.fromkeys(w for w in WORD.findall(text.lower()) if len(w) >= 2 and w not in STOPWORDS))


def fuse(semantic: list[dict], keyword: list[dict], limit: int) -> list[dict]:
    """Reciprocal rank fusion of the semantic and keyword rankings (ties: more keyword matches, then
    the higher semantic score)."""
    fused: dict[str, dict] = {}
    for rank, h in enumerate(semantic, start=1):
        fused[h["image_id"]] = {**h, "semantic_score": h["score"], "keyword_matches": 0, "score": 1.0 / (RRF_K + rank)}
    for rank, h in enumerate(keyword, start=1):
        hit = fused.setdefault(h["image_id"], {"image_id": h["image_id"], "taken_at": h.get("taken_at"),
                                               "tags": h.get("tags", []), "semantic_score": None, "score": 0.0})
        hit["keyword_matches"] = h["matches"]
        hit["score"] += 1.0 / (RRF_K + rank)
    ranked = sorted(fused.values(), key=lambda h: (-h["score"], -h["keyword_matches"], -(h["semantic_score"] or 0.0)))
    for h in ranked:
        h["score"] = round(h["score"], 6)
    return ranked[:limit]


class SearchService:
    def __init__(self, stores, settings, embedder_factory=None):
        """``embedder_factory``: makes the loaded text-embedding model (the describe stage's, so queries
        and images share one space), on first use; the caller (the read service) provides it: the
        runtime never imports a stage."""
        self.stores = stores
        self.settings = settings
        self._embedder_factory = embedder_factory
        self._embedder = None
        self._lock = threading.Lock()
        self._embedded: OrderedDict[str, list[float]] = OrderedDict()
        self._rankings: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()
        self._rankings_lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------------------------
    def embed(self, text: str) -> list[float]:
        """The query's sentence embedding (loads the model on first use): a model call, no store. The
        last ``EMBED_CACHE`` texts are remembered (the next page of a search embeds the same text)."""
        with self._lock:
            if text in self._embedded:
                self._embedded.move_to_end(text)
                return self._embedded[text]
            if self._embedder is None:
                if self._embedder_factory is None:
                    raise RuntimeError("this SearchService was made without a text embedder (embedder_factory)")
                self._embedder = self._embedder_factory()
            vector = self._embedder.predict([text])[0]
            self._embedded[text] = vector
            while len(self._embedded) > EMBED_CACHE:
                self._embedded.popitem(last=False)
            return vector

    def _filter(self, q: Query, exclude: str | None = None):
        must: list[Any] = [m.FieldCondition(key="user_id", match=m.MatchValue(value=q.user))]
        if q.taken_after:
            must.append(m.FieldCondition(key="taken_at", range=m.DatetimeRange(gt=q.taken_after)))
        if q.near:
            lat, lon, km = q.near
            must.append(m.FieldCondition(key="geo", geo_radius=m.GeoRadius(center=m.GeoPoint(lat=lat, lon=lon),
                                                                           radius=km * 1000)))
        if q.safe:
            must.append(m.FieldCondition(key="nsfw_score", range=m.Range(lt=self.settings.safety_threshold)))
        must_not = [m.HasIdCondition(has_id=[point_id(exclude)])] if exclude else []
        return m.Filter(must=must, must_not=must_not)

    def _vector_search(self, vector_name: str, vector: list[float], q: Query, exclude: str | None = None,
                       offset: int = 0) -> list[dict]:
        hits = self.stores.qdrant.nearest(vector_name, vector, self._filter(q, exclude), q.limit, offset)
        return [{"image_id": h.payload["image_id"], "score": round(float(h.score), 4), "taken_at": h.payload.get("taken_at"),
                 "tags": h.payload.get("tags", [])} for h in hits]

    def _text_search(self, q: Query, vector: list[float] | None = None, pool: int | None = None) -> list[dict]:
        """Semantic and keyword rankings of a text query, fused by reciprocal rank (``vector``: the query's
        embedding when already made; ``pool``: how deep each ranking is read, default three pages)."""
        pool = pool or max(q.limit * 3, 30)
        if vector is None:
            vector = self.embed(q.text)
        semantic = self._vector_search("semantic", vector, dataclasses.replace(q, limit=pool))
        words = query_words(q.text)
        keyword: list[dict] = []
        if words:
            points = self.stores.qdrant.keyword_matches(words, self._filter(q), max(pool, 200))
            for p in points:
                held = set(WORD.findall((p.payload.get("keywords") or "").lower()))
                n = sum(1 for w in words if w in held)
                if n:
                    keyword.append({"image_id": p.payload["image_id"], "matches": n, "taken_at": p.payload.get("taken_at"),
                                    "tags": p.payload.get("tags", [])})
            keyword.sort(key=lambda h: (-h["matches"], h["image_id"]))
        return fuse(semantic, keyword, q.limit)

    def _ranking(self, key: tuple, make):
        """``make()``, or what it gave for ``key`` less than ``RANKING_TTL_S`` ago."""
        now = time.monotonic()
        with self._rankings_lock:
            held = self._rankings.get(key)
            if held is not None and now - held[0] < RANKING_TTL_S:
                self._rankings.move_to_end(key)
                return held[1]
        value = make()
        with self._rankings_lock:
            self._rankings[key] = (now, value)
            self._rankings.move_to_end(key)
            while len(self._rankings) > RANKINGS_KEPT:
                self._rankings.popitem(last=False)
        return value

    # -- pages (the read service) ------------------------------------------------------------------
    def page(self, q: Query, text_vector: list[float] | None = None) -> SearchPage:
        """One page of ``q``'s hits and the cursor of the next (None on the last page). Text: both
        rankings read ``TEXT_POOL`` deep whatever the page, fused, then cut at the cursor's offset; like:
        Qdrant's own offset; tag and person: keyset on (taken_at, image_id), newest first, so a page
        never repeats or skips an image while the index stays as it was."""
        position = q.position()
        if q.text:
            offset = int(position.get("o", 0))
            fused = self._ranking(("text", q.fingerprint()), lambda: self._text_search(
                dataclasses.replace(q, limit=2 * TEXT_POOL, cursor=None), text_vector, pool=TEXT_POOL))
            hits = [dict(h) for h in fused[offset:offset + q.limit]]
            more = offset + q.limit < len(fused)
            return SearchPage(self._with_rows(hits, q.user, q.safe), q.make_cursor({"o": offset + q.limit}) if more else None)
        if q.like:
            offset = int(position.get("o", 0))
            if offset > MAX_VECTOR_OFFSET:
                raise SearchError(f"cursor: results past rank {MAX_VECTOR_OFFSET} are not served; refine the query")
            if offset + q.limit < LIKE_POOL:  # the first pages come from one ranking LIKE_POOL deep
                ranked = self._ranking(("like", q.fingerprint()), lambda: self._vector_search(
                    "visual", self._like_vector(q), dataclasses.replace(q, limit=LIKE_POOL), exclude=q.like))
                hits = [dict(h) for h in ranked[offset:offset + q.limit + 1]]
            else:
                hits = self._vector_search("visual", self._like_vector(q), dataclasses.replace(q, limit=q.limit + 1),
                                           exclude=q.like, offset=offset)
            more = len(hits) > q.limit
            return SearchPage(self._with_rows(hits[:q.limit], q.user, q.safe),
                              q.make_cursor({"o": offset + q.limit}) if more else None)
        after = (position["t"], position["i"]) if "i" in position else None
        pool = q.limit * NEAR_POOL if q.near else q.limit
        ordered = self._tag_search(q, after=after, keep=pool + 1)
        full = len(ordered) > pool
        ordered = ordered[:pool]
        rows = self._with_rows(ordered, q.user, q.safe)
        if not q.near:
            hits, last = rows, ordered[-1] if full and ordered else None
        else:
            near = self.filter_near(rows, dataclasses.replace(q, limit=pool))
            hits = near[:q.limit]
            last = hits[-1] if len(near) > q.limit else (ordered[-1] if full and ordered else None)
        cursor = q.make_cursor({"t": last["taken_at"] or "", "i": last["image_id"]}) if last is not None else None
        return SearchPage(hits, cursor)

    def _like_vector(self, q: Query) -> list[float]:
        found = self.stores.qdrant.image_vector(q.like, "visual")
        if found is None or found[0].get("user_id") != q.user:
            raise SearchNotFound(f"image {q.like} not found for user {q.user}")
        if not found[1]:
            raise SearchError(f"image {q.like} has no visual vector (analysed without the embedding stage)")
        return found[1]

    # -- queries ---------------------------------------------------------------------------------
    def _tag_search(self, q: Query, after: tuple[str, str] | None = None, keep: int | None = None) -> list[dict]:
        """The newest ``limit`` images carrying the tag (or one of the person's tags), newest first. Rows are
        streamed from the driver's pages and only the newest ``keep`` are held (a heap), and at most
        ``TAG_SCAN_LIMIT`` index rows are read per query: a tag on a million images costs bounded
        memory and time (it loaded every row before). With ``near`` more are kept, for the place filter.
        ``after``: (taken_at, image_id) of the last hit of the previous page: only older ones are kept."""
        tags = [q.tag.lower().strip()] if q.tag else self._ranking(
            ("person", q.user, q.person), lambda: self._person_tags(q.user, q.person))
        if keep is None:
            keep = q.limit * NEAR_POOL if q.near else q.limit
        heap: list[tuple[str, str]] = []  # (taken_at, image_id) of the newest ``keep``
        hits: dict[str, dict] = {}
        scanned = 0
        for tag in tags:
            for r in self.stores.cassandra.images_tagged(q.user, tag):
                scanned += 1
                if scanned > TAG_SCAN_LIMIT:
                    break
                if q.taken_after and (r.taken_at is None or r.taken_at.replace(tzinfo=timezone.utc) <= q.taken_after):
                    continue
                if r.image_id in hits:
                    continue
                taken = r.taken_at.isoformat() if r.taken_at else ""
                if after is not None and (taken, r.image_id) >= after:
                    continue
                if len(heap) >= keep and (taken, r.image_id) <= heap[0]:
                    continue
                hits[r.image_id] = {"image_id": r.image_id, "score": round(float(r.score or 1.0), 4),
                                    "taken_at": taken or None, "tags": [tag]}
                heapq.heappush(heap, (taken, r.image_id))
                if len(heap) > keep:
                    hits.pop(heapq.heappop(heap)[1], None)
        return sorted(hits.values(), key=lambda h: (h["taken_at"] or "", h["image_id"]), reverse=True)

    def _person_tags(self, user: str, name: str) -> list[str]:
        flt = m.Filter(must=[m.FieldCondition(key="user_id", match=m.MatchValue(value=user)),
                             m.FieldCondition(key="person_name", match=m.MatchValue(value=name))])
        ids: set[str] = set()
        offset = None
        for _ in range(PERSON_SCROLL_PAGES):  # paged: a person seen on many photos has many faces
            points, offset = self.stores.qdrant.run(lambda c, o=offset: c.scroll(
                "faces", scroll_filter=flt, limit=1000, offset=o, with_payload=["person_id"], with_vectors=False))
            ids.update(p.payload["person_id"] for p in points if p.payload.get("person_id"))
            if offset is None:
                break
        ids = sorted(ids)
        return [name.lower().strip()] + ids

    def _with_rows(self, hits: list[dict], user: str, safe: bool = False) -> list[dict]:
        """The hits with their stored caption, URI and GPS (one query for all of them); hits whose row is
        gone or belongs to someone else are dropped."""
        rows = self.stores.cassandra.rows([h["image_id"] for h in hits])
        out = []
        for h in hits:
            row = rows.get(h["image_id"])
            if row is None or row.user_id != user:
                continue
            if safe and (row.nsfw_score is None or row.nsfw_score >= self.settings.safety_threshold):
                continue
            h.update(caption=row.caption, uri=row.uri,
                     gps=[row.gps_lat, row.gps_lon] if row.gps_lat is not None else None)
            out.append(h)
        return out

    def filter_near(self, hits: list[dict], q: Query) -> list[dict]:
        if not q.near:
            return hits
        lat, lon, km = q.near
        return [h for h in hits if h.get("gps") and haversine_km(lat, lon, *h["gps"]) <= km][: q.limit]
