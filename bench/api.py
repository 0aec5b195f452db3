"""Benchmark of the read service's search (``lensflow api``, ``GET /v1/search``) at 10 000 and 100 000 images.

    .venv/bin/python bench/api.py [--sizes 10000,100000] [--clients 1,16] [--duration 8] [--json bench/results-api.json]

For one user, N synthetic images are written straight into the stores of a private namespace on the
shared local stack (a keyspace of its own, a Qdrant local-mode folder of its own: the local default),
built the way the join builds them: stage records as the join decodes them (the ``records.result``
envelope; metadata with capture time, camera, GPS and place for some, keywords; objects; scene
places, events and classes; OCR text for some; safety scores; faces for a few hundred; the visual
embedding; the caption and its semantic vector), then ``join_projection.assemble`` makes the
``images`` / ``analysis_results`` rows, the tags and the Qdrant point, and ``CassandraStore.write`` /
``QdrantStore.upsert_images`` store them (the index ``user_images_by_tag``, ``images_by_user``,
``images_by_sha``, ``image_tags``: the join's own requests), with ``mark_notified`` after;
``analysis_results`` without the two vectors unless ``--full-records`` (the search never reads that
row; with them it is ~45 KB an image). Vectors: visual (1280-d) drawn around 40 cluster centres;
semantic (384-d) the normalised mean of MiniLM's embeddings of the caption's and tags' words, plus
noise, so that a text query lands near the images whose words it uses. A few hundred ``faces`` points
(named people and unnamed clusters) are written as ``FaceGallery.assign`` writes them, and the
images they are on carry the person tags.

Sizes are filled in order, the larger on top of the smaller (10 000, then 90 000 more). Meanwhile, at
``--probe-every`` images, a text, a like and a tag query run in this process through
``SearchService.page`` (no HTTP): how the search cost grows with the collection, between the measured
sizes; and how many of the images holding every word of a text query its keyword half gets to see.

Then, per size, the read service runs on that data: ``lensflow.api.server.serve(settings)`` in a
subprocess (on Qdrant's local mode the serving process must own the folder; ``lensflow api`` refuses
it there because the worker hosts it, ``serve`` does not), with the per-user limits raised
(``LENSFLOW_API_USER_CONCURRENCY``, ``LENSFLOW_API_USER_RATE``: 16 clients of one user would
otherwise measure the 429s). A token comes from ``lensflow.api.auth.issue`` (same data dir, same
local secret). After a warm-up (the first text query loads MiniLM on the model thread), each kind of
search (text, like, tag, person, text with ``taken_after`` + ``near`` + ``safe``) is sent by 1 and by
16 concurrent clients (threads, one httpx client each) for ``--duration`` seconds (at least
``--min-requests``, at most ``--cell-cap`` seconds): p50 / p95 of the answered requests, requests/s,
errors by status, mean hits; the service's RSS (after loading, and the highest while measured).

Where Qdrant's local mode stops being usable (inserts, loading, queries, memory) is reported as a
finding and the run carries on; the service is killed if the machine runs short of memory
(``--min-free-mib``: local mode holds every point in the serving process, ~100 KB each once loaded).
Everything (keyspace, topics, folders) is removed afterwards (``--keep``: not). bench/RESULTS.md has
the figures of 2026-12-06 (about 20 minutes for both sizes on the 2-core machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

from spine import _cleanup, bench_env, pct, rss_mib  # noqa: E402

USER = "bench-user"
TARGET_TEXT_P95_MS = 150.0  # at 10 000 images, 1 client

# --- the synthetic library --------------------------------------------------------------------------
#: (COCO label, share of images with it)
OBJECTS = [("person", 0.35), ("car", 0.12), ("dog", 0.10), ("chair", 0.08), ("cat", 0.06), ("cup", 0.06),
           ("bicycle", 0.05), ("bird", 0.05), ("boat", 0.04), ("bottle", 0.04), ("umbrella", 0.03),
           ("horse", 0.02), ("cake", 0.02), ("laptop", 0.03), ("bus", 0.02), ("train", 0.015), ("kite", 0.01),
           ("surfboard", 0.01), ("pizza", 0.015), ("teddy bear", 0.005)]
#: (place label, weight, indoor)
PLACES = [("beach", 8, False), ("mountain", 7, False), ("forest", 6, False), ("street", 9, False), ("park", 8, False),
          ("kitchen", 5, True), ("living room", 6, True), ("restaurant", 4, True), ("lake", 4, False),
          ("desert", 1, False), ("stadium", 1, False), ("office", 2, True), ("bridge", 2, False), ("harbor", 2, False),
          ("snowfield", 2, False), ("garden", 4, False), ("museum", 1, True), ("church", 1, True), ("market", 2, False),
          ("airport", 1, True)]
EVENTS = [("wedding", 0.02), ("birthday", 0.03), ("concert", 0.015), ("graduation", 0.01), ("christmas", 0.02),
          ("hiking", 0.03)]
ADJECTIVES = ["red", "blue", "green", "yellow", "white", "black", "brown", "small", "big", "old", "young", "happy",
              "sunny", "snowy", "foggy", "colorful", "quiet", "busy"]
PREPOSITIONS = ["on", "in", "near", "at", "by"]
SIGN_WORDS = ["open", "closed", "cafe", "coffee", "sale", "exit", "stop", "hotel", "bakery", "pharmacy", "museum",
              "station", "parking", "welcome", "menu", "pizza", "bar", "taxi", "library", "police"]
META_KEYWORDS = ["holiday", "family", "summer", "winter", "friends", "vacation", "work", "travel", "kids", "weekend"]
#: (city, region, country, country code, lat, lon)
CITIES = [("Paris", "Île-de-France", "France", "FR", 48.8566, 2.3522), ("Lyon", "Auvergne-Rhône-Alpes", "France", "FR", 45.764, 4.8357),
          ("Berlin", "Berlin", "Germany", "DE", 52.52, 13.405), ("Munich", "Bavaria", "Germany", "DE", 48.1351, 11.582),
          ("London", "England", "United Kingdom", "GB", 51.5074, -0.1278), ("New York", "New York", "United States", "US", 40.7128, -74.006),
          ("San Francisco", "California", "United States", "US", 37.7749, -122.4194), ("Tokyo", "Tokyo", "Japan", "JP", 35.6762, 139.6503),
          ("Sydney", "New South Wales", "Australia", "AU", -33.8688, 151.2093), ("Barcelona", "Catalonia", "Spain", "ES", 41.3874, 2.1686)]
CAMERAS = [("Canon", "Canon EOS R5"), ("Apple", "iPhone 13"), ("SONY", "ILCE-7M3"), ("Google", "Pixel 7"),
           ("NIKON CORPORATION", "NIKON Z 6"), ("FUJIFILM", "X-T4")]
PEOPLE = ["Alice Martin", "Bob Dupont", "Carol Smith", "David Chen", "Emma Weber", "Frank Rossi", "Grace Kim",
          "Henry Lopez", "Iris Novak", "Jack Brown", "Kate Müller", "Leo Tanaka"]
UNNAMED_CLUSTERS = 8
VISUAL_CLUSTERS = 40
STAGES_RUN = ["metadata", "objects", "scene", "text", "faces", "embedding", "safety"]
DERIVED = ["describe"]

TEXT_QUERIES = ["dog on the beach", "red car in the street", "snowy mountain", "birthday cake", "children in the park",
                "coffee shop sign", "wedding in the church", "boat in the harbor", "cat in the living room",
                "sunny lake", "open bakery", "bicycle near the bridge"]


def _gallery():
    """The module of the faces gallery's ids (``streams/faces_store.py``; ``agents/faces.py`` before it moved)."""
    try:
        from lensflow.streams import faces_store
        return faces_store
    except ImportError:
        from lensflow.agents import faces
        return faces


def _face_model_name() -> str:
    """The default faces model's name (``SFaceModel.name``), written on every face point."""
    import importlib

    for module in ("lensflow.agents.face_models", "lensflow.agents.faces"):
        try:
            return importlib.import_module(module).SFaceModel.name
        except (ImportError, AttributeError):
            continue
    return "yunet-sface"


def _result(stage: str, image_id: str, user_id: str, run_id: str, *, model, duration_ms: float = 0.0, **fields) -> dict:
    """A stage result as the join gets it: decoded from its topic, a dict (the envelope of
    ``records.result`` and the stage's fields)."""
    return {"image_id": image_id, "user_id": user_id, "run_id": run_id, "stage": stage, "model": model, "status": "ok",
            "error": None, "duration_ms": float(duration_ms), "produced_at": datetime.now(timezone.utc), **fields}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


class Library:
    """Image ``i`` of the synthetic library, deterministic: its stage records, assembled as the join does."""

    def __init__(self, user: str, max_size: int, faces: int, embed_words, seed: int = 7):
        from lensflow.agents import embedding, textembed
        from lensflow.agents.concepts import lexicon
        from lensflow.streams.store import FACE_DIM, IMAGE_VECTORS

        assert IMAGE_VECTORS["visual"] == embedding.DIM and IMAGE_VECTORS["semantic"] == textembed.DIM
        self.user, self.seed = user, seed
        self.visual_dim, self.semantic_dim, self.face_dim = IMAGE_VECTORS["visual"], IMAGE_VECTORS["semantic"], FACE_DIM
        rng = np.random.default_rng(seed)
        self.visual_centres = np.array([_unit(v) for v in rng.standard_normal((VISUAL_CLUSTERS, self.visual_dim))])
        self.classes = [k for k in list(lexicon())[:80]]
        words = sorted({w for phrase in ([o for o, _ in OBJECTS] + [p for p, _, _ in PLACES] + [e for e, _ in EVENTS]
                                         + ADJECTIVES + SIGN_WORDS + META_KEYWORDS + [c[0] for c in CITIES])
                        for w in phrase.lower().split()})
        self.word_vectors = dict(zip(words, np.asarray(embed_words(words), dtype=np.float32)))
        self.face_model = _face_model_name()
        self.person_centres = rng.standard_normal((len(PEOPLE) + UNNAMED_CLUSTERS, self.face_dim)) * 0.25
        # faces on a few hundred images among the first ones (the same at every size): about 1.3 a photo
        with_faces = max(1, round(faces / 1.3))
        step = max(1, min(max_size, 10_000) // with_faces)
        self.face_images = {i * step for i in range(with_faces)}
        self.faces_total = faces
        self._face_budget = faces
        self.place_weights = [w for _, w, _ in PLACES]

    # -- one image --------------------------------------------------------------------------------
    def image_id(self, i: int) -> str:
        return f"bench-{i:07d}"

    def records(self, i: int) -> tuple[dict, dict]:
        """(ImagePrepared, {stage: result}) of image ``i``, as the stages would send them."""
        face_point_id = _gallery().face_point_id
        result = _result

        r = random.Random(self.seed * 1_000_003 + i)
        nrng = np.random.default_rng(self.seed * 1_000_003 + i)
        image_id, user, run_id = self.image_id(i), self.user, f"run-{i:07d}"
        model = lambda name: {"name": name, "version": "1", "sha256": None}  # noqa: E731
        taken = datetime(2012, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=r.randrange(14 * 365 * 86400))
        uploaded = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=i)
        sha = hashlib.sha256(f"{self.seed}/{i}".encode()).hexdigest()
        prepared = {"image_id": image_id, "user_id": user, "run_id": run_id, "stage": "preprocess", "model": None,
                    "status": "ok", "error": None, "duration_ms": 12.0, "produced_at": uploaded,
                    "source_uri": f"file:///bench/uploads/{user}/{sha[:2]}/{sha}.jpg",
                    "uri": f"file:///bench/derivatives/{user}/{sha[:2]}/{sha}.jpg", "format": "JPEG",
                    "mime_type": "image/jpeg", "size_bytes": 2_400_000 + r.randrange(1_000_000), "sha256": sha,
                    "original_width": 4000, "original_height": 3000, "width": 1600, "height": 1200, "orientation": 1,
                    "derivative_sha256": hashlib.sha256(sha.encode()).hexdigest(), "derivative_size_bytes": 380_000,
                    "expected_stages": STAGES_RUN, "derived_stages": DERIVED, "uploaded_at": uploaded, "mode": "full"}
        make, cam = CAMERAS[r.randrange(len(CAMERAS))]
        gps = place = None
        if r.random() < 0.4:
            city, region, country, cc, lat, lon = CITIES[r.randrange(len(CITIES))]
            gps = {"lat": lat + r.uniform(-0.15, 0.15), "lon": lon + r.uniform(-0.15, 0.15), "alt_m": None}
            place = {"city": city, "region": region, "country": country, "country_code": cc, "distance_km": r.uniform(0, 12)}
        keywords = r.sample(META_KEYWORDS, r.randint(1, 2)) if r.random() < 0.15 else []
        md = result("metadata", image_id, user, run_id, model=model("exif"), duration_ms=1.5, taken_at=taken,
                    taken_at_local=taken.strftime("%Y-%m-%dT%H:%M:%S"), tz_offset="+00:00", camera_make=make,
                    camera_model=cam, lens_make=None, lens_model=None, software=None, exposure_time_s=1 / 250,
                    f_number=2.8, iso=100 * (1 + r.randrange(16)), focal_length_mm=float(r.choice([24, 35, 50, 85])),
                    focal_length_35mm=None, gps=gps, width=4000, height=3000, orientation=1,
                    title=f"{r.choice(META_KEYWORDS).title()} {taken.year}" if r.random() < 0.05 else None,
                    description=None, keywords=keywords, rating=None, creator=None, place=place, warnings=[])
        found = [o for o, share in OBJECTS if r.random() < share][:4]
        detections = [{"label": o, "class_id": k, "confidence": round(r.uniform(0.4, 0.98), 3),
                       "box": {"x1": 10.0, "y1": 20.0, "x2": 400.0, "y2": 300.0}} for k, o in enumerate(found)]
        objects = result("objects", image_id, user, run_id, model=model("centernet"), duration_ms=48.0, detections=detections)
        main = r.choices(range(len(PLACES)), self.place_weights)[0]
        places = [main] + ([r.randrange(len(PLACES))] if r.random() < 0.3 else [])
        places = list(dict.fromkeys(places))
        events = [e for e, share in EVENTS if r.random() < share]
        classes = [{"label": r.choice(self.classes), "score": round(r.uniform(0.45, 0.9), 3)}] if r.random() < 0.3 else []
        scene = result("scene", image_id, user, run_id, model=model("efficientnet-lite0"), duration_ms=9.0,
                       environment={"label": "indoor" if PLACES[main][2] else "outdoor", "score": 0.9},
                       places=[{"label": PLACES[p][0], "score": round(0.8 - 0.3 * k, 3)} for k, p in enumerate(places)],
                       events=[{"label": e, "score": 0.7} for e in events], classes=classes)
        ocr = " ".join(r.sample(SIGN_WORDS, r.randint(1, 3))).upper() if r.random() < 0.08 else ""
        text = result("text", image_id, user, run_id, model=model("ppocr"), duration_ms=40.0, text=ocr,
                      language="en" if ocr else None, script="Latn" if ocr else None,
                      lines=[{"text": ocr, "confidence": 0.93, "box": {"x1": 0.0, "y1": 0.0, "x2": 200.0, "y2": 40.0}}] if ocr else [])
        faces = []
        if i in self.face_images and self._face_budget > 0:
            for k in range(min(self._face_budget, 2 if r.random() < 0.3 else 1)):
                who = r.randrange(len(self.person_centres))
                face_id = face_point_id(user, image_id, k)
                named = who < len(PEOPLE)
                encoding = (self.person_centres[who] + nrng.standard_normal(self.face_dim) * 0.02).astype(np.float32)
                faces.append({"face_id": face_id, "box": {"x1": 100.0 + 200 * k, "y1": 80.0, "x2": 260.0 + 200 * k, "y2": 280.0},
                              "confidence": 0.97, "landmarks": [{"x": 150.0, "y": 150.0}] * 5,
                              "encoding": [float(x) for x in encoding],
                              "person_id": self.person_id(who), "person_name": PEOPLE[who] if named else None,
                              "match_distance": round(r.uniform(0.3, 0.9), 3) if named else None})
            self._face_budget -= len(faces)
        faces_rec = result("faces", image_id, user, run_id, model=model(self.face_model), duration_ms=30.0, faces=faces)
        centre = self.visual_centres[(main * 7 + (found and [o for o, _ in OBJECTS].index(found[0]) or 0)) % VISUAL_CLUSTERS]
        visual = _unit(centre + nrng.standard_normal(self.visual_dim) * (0.9 / math.sqrt(self.visual_dim)))
        embedding = result("embedding", image_id, user, run_id, model=model("efficientnet-lite0"), duration_ms=9.0,
                           vector_name="visual", dim=self.visual_dim, vector=visual.astype(np.float32).tolist())
        nsfw = float(nrng.beta(1, 30)) if r.random() >= 0.02 else r.uniform(0.55, 0.97)
        safety = result("safety", image_id, user, run_id, model=model("open-nsfw"), duration_ms=20.0, nsfw_score=nsfw,
                        unsafe=nsfw >= 0.5, threshold=0.5)
        adjective = r.choice(ADJECTIVES)
        subject = found[0] if found else "view"
        caption = f"a {adjective} {subject} {r.choice(PREPOSITIONS)} the {PLACES[main][0]}"
        if len(found) > 1:
            caption += f" with a {found[1]}"
        words = caption.split() + [w for o in found for w in o.split()] + [w for e in events for w in e.split()]
        words += ocr.lower().split() + keywords + ([w for w in place["city"].lower().split()] if place else [])
        known = [self.word_vectors[w] for w in words if w in self.word_vectors]
        semantic = _unit(np.mean(known, axis=0) + nrng.standard_normal(self.semantic_dim) * (0.35 / math.sqrt(self.semantic_dim)))
        describe = result("describe", image_id, user, run_id, model=model("captioner"), duration_ms=150.0, caption=caption,
                          text_model=model("minilm-l6-v2"), semantic_vector=semantic.astype(np.float32).tolist())
        return prepared, {"metadata": md, "objects": objects, "scene": scene, "text": text, "faces": faces_rec,
                          "embedding": embedding, "safety": safety, "describe": describe}

    def person_id(self, who: int) -> str:
        g = _gallery()
        if who < len(PEOPLE):
            return g._named_person_id(self.user, PEOPLE[who])
        return g.new_person_id(self.user, g.face_point_id(self.user, f"cluster-{who}", 0), self.face_model)

    def completed(self, i: int, codec, full: bool = False):
        """Image ``i`` as the join completes it: ``assemble`` of its records (the Avro bytes of each as
        ``stage_records``), plus the face points ``FaceGallery.assign`` would have stored. Unless ``full``,
        the two vectors are left out of what only ``analysis_results`` keeps (its ``stage_records`` and
        ``result_json``: ~45 KB an image with them, and most of the bench's CPU; the search never reads
        that row) and put back where the search reads them: ``images.visual`` and the Qdrant point."""
        from lensflow.agents.join_projection import assemble
        from lensflow.streams.topology import RESULT_TOPIC, TOPICS

        prepared, results = self.records(i)
        visual, semantic = results["embedding"]["vector"], results["describe"]["semantic_vector"]
        if not full:
            results = {**results, "embedding": {**results["embedding"], "vector": [0.0]},
                       "describe": {**results["describe"], "semantic_vector": [0.0]}}
        raw = {"preprocess": codec.encode("ImagePrepared", prepared)}
        for stage, rec in results.items():
            raw[stage] = codec.encode(TOPICS[RESULT_TOPIC[stage]].record, rec)
        done = assemble(prepared, results, raw, STAGES_RUN + DERIVED, 1)
        if not full:
            done.image_row["visual"] = visual
            done.point["vectors"] = {"visual": visual, "semantic": semantic}
        done.first_write = True
        return done, self.face_points(done.image_id, results["faces"]["faces"])

    def face_points(self, image_id: str, faces: list[dict]) -> list[dict]:
        return [{"id": f["face_id"], "vector": f["encoding"], "payload": {
            "user_id": self.user, "image_id": image_id, "face_index": k, "box": f["box"], "person_id": f["person_id"],
            "person_name": f["person_name"], "enrolled": False, "match_distance": f["match_distance"], "model": self.face_model}}
            for k, f in enumerate(faces)]


# --- inserting ---------------------------------------------------------------------------------------
class Inserter:
    """The bench's own Cassandra and Qdrant clients on the private namespace (Qdrant's folder is the
    bench's while it inserts; closed before the service opens it)."""

    def __init__(self, settings, library: Library, full_records: bool, wave: int = 64, qdrant_batch: int = 256):
        from lensflow.streams.codec import Codec
        from lensflow.streams.store import CassandraStore, QdrantStore

        self.settings, self.library, self.full_records = settings, library, full_records
        self.wave, self.qdrant_batch = wave, qdrant_batch
        self.codec = Codec()
        self.cassandra = CassandraStore(settings.cassandra_hosts, settings.cassandra_port, settings.cassandra_keyspace)
        t0 = time.perf_counter()
        self.qdrant = QdrantStore(None, settings.qdrant_path)
        self.open_s = time.perf_counter() - t0
        self.retries = 0
        self.faces_written = 0
        from lensflow.streams.search import WORD, query_words

        self._word = WORD
        self.query_words = {t: query_words(t) for t in TEXT_QUERIES}
        #: text query -> images whose keywords hold every one of its words (kept by the library: all inserts)
        self.full_matches = library.__dict__.setdefault("full_matches", dict.fromkeys(TEXT_QUERIES, 0))
        self.cpu = {"generate_s": 0.0}  # the main thread's CPU building the records and assembling them
        self.qdrant_s = 0.0  # wall time of the Qdrant upserts (one at a time, on the store's thread)

    def close(self) -> None:
        self.qdrant.close()
        self.cassandra.close()

    async def _write(self, done) -> None:
        for attempt in range(4):
            try:
                await self.cassandra.write(done.image_row, done.analysis_row, done.tags, first_write=True)
                await self.cassandra.mark_notified(done.image_id, done.run_id)
                return
            except Exception:
                if attempt == 3:
                    raise
                self.retries += 1
                await asyncio.sleep(0.5 * (attempt + 1))

    async def _upsert(self, points: list[dict]) -> None:
        t0 = time.perf_counter()
        await self.qdrant.upsert_images(points)
        self.qdrant_s += time.perf_counter() - t0

    async def insert(self, start: int, end: int, report) -> None:
        """Images ``start`` .. ``end - 1``: ``wave`` Cassandra writes in flight, Qdrant upserts of
        ``qdrant_batch`` points on its thread meanwhile."""
        inflight: set[asyncio.Task] = set()
        failed: list[BaseException] = []
        points: list[dict] = []
        faces: list[dict] = []
        upsert: asyncio.Future | None = None

        def finished(task: asyncio.Task) -> None:
            inflight.discard(task)
            if not task.cancelled() and task.exception() is not None:
                failed.append(task.exception())

        async def flush(last: bool = False) -> None:
            nonlocal upsert, points, faces
            if upsert is not None:
                await upsert
                upsert = None
            if points:
                batch, points = points, []
                upsert = asyncio.ensure_future(self._upsert(batch))
            if faces:
                batch_f, faces = faces, []
                self.faces_written += len(batch_f)
                await self.qdrant.call(_upsert_faces, batch_f)
            if last and upsert is not None:
                await upsert
                upsert = None

        for i in range(start, end):
            if failed:
                raise failed[0]
            t0 = time.thread_time()
            done, face_points = self.library.completed(i, self.codec, self.full_records)
            self.cpu["generate_s"] += time.thread_time() - t0
            task = asyncio.ensure_future(self._write(done))
            inflight.add(task)
            task.add_done_callback(finished)
            points.append(done.point)
            faces += face_points
            held = set(self._word.findall(done.point["payload"]["keywords"]))
            for text, words in self.query_words.items():
                if all(w in held for w in words):
                    self.full_matches[text] += 1
            if len(points) >= self.qdrant_batch:
                await flush()
            if len(inflight) >= self.wave:
                await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(0)
            report(i + 1 - len(inflight))
        if inflight:
            await asyncio.wait(inflight)
        await flush(last=True)
        if failed:
            raise failed[0]
        report(end)


def _upsert_faces(client, points: list[dict]) -> None:
    from qdrant_client import models as m

    client.upsert("faces", wait=True, points=[m.PointStruct(id=p["id"], vector=p["vector"], payload=p["payload"]) for p in points])


class Progress:
    def __init__(self, label: str, start: int, end: int, every_s: float = 10.0):
        self.label, self.start, self.end, self.every_s = label, start, end, every_s
        self.t0 = self.last_t = time.perf_counter()
        self.last_n = start
        self.curve: list[tuple[int, float]] = []  # (images stored, images/s over the last interval)

    def __call__(self, n: int) -> None:
        now = time.perf_counter()
        if now - self.last_t < self.every_s and n < self.end:
            return
        rate = (n - self.last_n) / max(now - self.last_t, 1e-9)
        overall = (n - self.start) / max(now - self.t0, 1e-9)
        self.curve.append((n, round(rate, 1)))
        print(f"  {self.label}: {n:>7}/{self.end} stored, {rate:6.0f} images/s now, {overall:6.0f} images/s overall, "
              f"{now - self.t0:5.0f} s", flush=True)
        self.last_t, self.last_n = now, n


def probe_search(inserter: Inserter, embedder, settings, budget_s: float = 6.0) -> dict:
    """In-process text, like and tag searches through ``SearchService.page`` on the bench's own clients
    (no HTTP, no concurrency; best of two, one when it takes over ``budget_s``): how one query's cost
    grows with the collection. And the keyword half of a text search: of the images whose keywords
    hold every word of the query, how many the keyword ranking gets to see (``keyword_matches`` reads
    300 matches of any word, in point id order)."""
    from lensflow.streams.search import Query, SearchService, TEXT_POOL

    svc = SearchService(SimpleNamespace(cassandra=inserter.cassandra, qdrant=inserter.qdrant), settings,
                        embedder_factory=lambda: embedder)
    out = {}
    text = TEXT_QUERIES[0]
    for kind, params in [("text", {"text": text}), ("like", {"like": inserter.library.image_id(1)}), ("tag", {"tag": "dog"})]:
        times = []
        for _ in range(2):
            q = Query.parse({"user": USER, **params})
            vector = svc.embed(q.text) if q.text else None
            t0 = time.perf_counter()
            svc.page(q, vector)
            times.append((time.perf_counter() - t0) * 1000)
            if times[-1] > budget_s * 1000:
                break
        out[kind] = round(min(times), 1)
    words = inserter.query_words[text]
    q = Query.parse({"user": USER, "text": text})
    seen = inserter.qdrant.keyword_matches(words, svc._filter(q), max(TEXT_POOL, 200))
    full = sum(1 for p in seen if all(w in set(inserter._word.findall(p.payload.get("keywords") or "")) for w in words))
    out["keyword_query"] = text
    out["keyword_full_matches_seen"] = full
    out["keyword_full_matches_stored"] = inserter.full_matches[text]
    return out


# --- the service --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: what ``lensflow api`` runs in the foreground, less its refusal of local mode
SERVE = ("from lensflow.streams.observability import configure_logging\n"
         "from lensflow.streams.settings import Settings\n"
         "from lensflow.api.server import serve\n"
         "s = Settings()\n"
         "configure_logging(s.log_level, s.log_json)\n"
         "serve(s)\n")


def cli_module() -> str:
    """The CLI's module (``lensflow.cli``; ``lensflow.streams.cli`` before it moved)."""
    import importlib.util

    return "lensflow.cli" if importlib.util.find_spec("lensflow.cli") is not None else "lensflow.streams.cli"


def poll_ready(url: str, timeout_s: float, exited) -> str:
    """"ready" once ``url`` answers 200, "exited" once ``exited()``, else "timeout": the CLI's own poll."""
    from lensflow.cli.supervise import poll_ready as cli_poll_ready

    return cli_poll_ready(url, timeout_s, exited)


@contextlib.contextmanager
def service(env: dict, port: int, log: Path, ready_timeout_s: float, min_free_mib: float):
    """``serve(settings)`` in a subprocess; yields (process, seconds to /readyz, its MemoryGuard) or raises with
    the log's tail."""
    env = {**env, "LENSFLOW_API_PORT": str(port), "LENSFLOW_API_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-c", SERVE], env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    guard = MemoryGuard(proc, min_free_mib)
    t0 = time.perf_counter()
    try:
        outcome = poll_ready(f"http://127.0.0.1:{port}/readyz", ready_timeout_s, lambda: proc.poll() is not None)
        if outcome != "ready":
            raise RuntimeError(f"service {outcome} (exit {proc.poll()}) after {time.perf_counter() - t0:.0f} s"
                               + (f"; {guard.killed}" if guard.killed else "") + ": " + tail(log))
        yield proc, time.perf_counter() - t0, guard
    finally:
        guard.stop()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


class MemoryGuard:
    """Kills the service (this bench's own subprocess) when the machine's available memory falls under
    ``min_free_mib``: Qdrant's local mode holds every point in the serving process, and on a shared
    machine the kernel's OOM killer would pick someone else's process (Cassandra, say)."""

    def __init__(self, proc: subprocess.Popen, min_free_mib: float):
        self.proc, self.min_free_mib = proc, min_free_mib
        self.killed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25) and self.proc.poll() is None:
            free = available_mib()
            if free < self.min_free_mib:
                rss = rss_mib(self.proc.pid)
                self.proc.kill()
                self.killed = (f"killed by the bench: the machine had {free:.0f} MiB available (< {self.min_free_mib:.0f}, "
                               f"--min-free-mib) with the service at {rss or 0:.0f} MiB RSS")
                return

    def stop(self) -> None:
        self._stop.set()


class RssWatch:
    """The highest RSS of a process, sampled every 0.5 s on a thread of its own."""

    def __init__(self, pid: int):
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            rss = rss_mib(self.pid)
            if rss:
                self.peak = max(self.peak, rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(2)
        return self.peak


def queries_of(kind: str, library: Library, size: int) -> list[dict]:
    r = random.Random(size)
    if kind == "text":
        return [{"text": t} for t in TEXT_QUERIES]
    if kind == "like":
        return [{"like": library.image_id(r.randrange(size))} for _ in range(50)]
    if kind == "tag":  # common to rare: person ~35 %, dog ~10 %, beach ~8 %, 2019 ~7 %, paris ~4 %, wedding ~2 %
        return [{"tag": t} for t in ("person", "dog", "beach", "2019", "paris", "wedding")]
    if kind == "person":
        return [{"person": p} for p in PEOPLE]
    if kind == "text+filters":
        out = []
        for k, t in enumerate(TEXT_QUERIES):
            city = CITIES[k % len(CITIES)]
            out.append({"text": t, "taken_after": "2019-01-01", "near": f"{city[4]},{city[5]},50", "safe": "true"})
        return out
    raise ValueError(kind)


KINDS = ["text", "like", "tag", "person", "text+filters"]


def run_cell(base: str, token: str, queries: list[dict], clients: int, duration_s: float, min_requests: int,
             cap_s: float, timeout_s: float) -> dict:
    """``clients`` threads, each with its own connection, sending ``queries`` in turn for ``duration_s``
    (at least ``min_requests`` in all, never past ``cap_s``)."""
    import httpx

    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    hits: list[int] = []
    t0 = time.perf_counter()
    deadline, cap = t0 + duration_s, t0 + cap_s

    def client() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s) as c:
            while True:
                now = time.perf_counter()
                with lock:
                    sent = len(latencies) + sum(v for k, v in statuses.items() if k != "200")
                if now >= cap or (now >= deadline and sent >= min_requests):
                    return
                params = queries[next(counter) % len(queries)]
                start = time.perf_counter()
                try:
                    response = c.get("/v1/search", params=params)
                    status = str(response.status_code)
                    found = len(response.json().get("results", [])) if response.status_code == 200 else None
                except httpx.HTTPError as exc:
                    status, found = type(exc).__name__, None
                ms = (time.perf_counter() - start) * 1000
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == "200":
                        latencies.append(ms)
                        hits.append(found)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    answered = len(latencies)
    total = sum(statuses.values())
    return {"clients": clients, "requests": total, "ok": answered, "statuses": statuses, "wall_s": round(wall, 2),
            "p50_ms": round(pct(latencies, 50), 1) if latencies else None,
            "p95_ms": round(pct(latencies, 95), 1) if latencies else None,
            "max_ms": round(max(latencies), 1) if latencies else None,
            "req_per_s": round(answered / wall, 2) if wall else None,
            "mean_hits": round(statistics.mean(hits), 1) if hits else None,
            "error_rate": round(1 - answered / total, 3) if total else None,
            "load_avg_1m": round(os.getloadavg()[0], 2)}  # the machine is shared: how busy it was


def measure_size(args, env: dict, settings, library: Library, size: int, work: Path) -> dict:
    from lensflow.api import auth

    port = free_port()
    out: dict = {"size": size}
    log = work / f"api-{size}.log"
    print(f"\n== read service on {size} images (Qdrant local mode, {settings.qdrant_path})", flush=True)
    try:
        with service(env, port, log, args.ready_timeout, args.min_free_mib) as (proc, ready_s, guard):
            out["ready_s"] = round(ready_s, 1)
            out["rss_loaded_mib"] = round(rss_mib(proc.pid) or 0, 0)
            print(f"  ready in {ready_s:.1f} s (opening the stores: local mode loads every point), RSS {out['rss_loaded_mib']:.0f} MiB",
                  flush=True)
            token = auth.issue(settings, USER, 3 * 3600)
            base = f"http://127.0.0.1:{port}"
            watch = RssWatch(proc.pid)
            t0 = time.perf_counter()
            for kind in KINDS:  # warm-up: the first text query loads MiniLM on the model thread
                warm = run_cell(base, token, queries_of(kind, library, size), 1, 0, args.warmup, 5.0, args.timeout)
                if warm["ok"] == 0:
                    print(f"  warm-up of {kind}: no answer ({warm['statuses']})", flush=True)
            out["warmup_s"] = round(time.perf_counter() - t0, 1)
            cells = {}
            for clients in args.clients:
                for kind in KINDS:
                    if proc.poll() is not None:
                        raise RuntimeError(f"service exited ({proc.poll()})" + (f"; {guard.killed}" if guard.killed else "")
                                           + f": {tail(log)}")
                    cell = run_cell(base, token, queries_of(kind, library, size), clients, args.duration,
                                    args.min_requests, args.cell_cap, args.timeout)
                    cells[f"{kind}/{clients}"] = {"kind": kind, **cell}
                    errors = {k: v for k, v in cell["statuses"].items() if k != "200"}
                    print(f"  {kind:<13} {clients:>2} client{'s' if clients > 1 else ' '}  p50 {fmt(cell['p50_ms']):>8}  "
                          f"p95 {fmt(cell['p95_ms']):>8}  {cell['req_per_s'] or 0:7.1f} req/s  {cell['ok']:>4} answered"
                          f"{'  errors ' + json.dumps(errors) if errors else ''}  hits {cell['mean_hits']}  "
                          f"(load {cell['load_avg_1m']})", flush=True)
            out["cells"] = cells
            out["rss_peak_mib"] = round(watch.stop(), 0)
            out["rss_end_mib"] = round(rss_mib(proc.pid) or 0, 0)
            print(f"  service RSS: {out['rss_loaded_mib']:.0f} MiB loaded, {out['rss_peak_mib']:.0f} MiB peak while measured", flush=True)
    except Exception as exc:  # a finding: the size at which local mode breaks
        out["error"] = f"{type(exc).__name__}: {str(exc)[:1500]}"
        print(f"  !! {out['error']}", flush=True)
    return out


def fmt(ms) -> str:
    return "-" if ms is None else (f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s")


def breaks(result: dict, args) -> list[str]:
    """What made local mode unusable at this size (empty: usable)."""
    found = []
    if "error" in result:
        found.append(result["error"][:300])
    for name, c in result.get("cells", {}).items():
        if c["error_rate"] and c["error_rate"] > 0.05:
            found.append(f"{name}: {c['error_rate'] * 100:.0f} % errors {c['statuses']}")
        elif c["p95_ms"] is not None and c["p95_ms"] > args.unusable_ms:
            found.append(f"{name}: p95 {fmt(c['p95_ms'])} > {fmt(args.unusable_ms)}")
    return found


def table(results: list[dict], clients: list[int]) -> str:
    """The markdown table: a row per size and kind, p50 / p95 / answered requests a second per client count,
    and the errors by status (a 503 is the service giving up after its store deadline)."""
    head = "| images | search | " + " | ".join(f"{c} client{'s' if c > 1 else ''}: p50 / p95 / req/s" for c in clients) + " |"
    rows = [head, "|" + " --- |" * (2 + len(clients))]
    for r in results:
        if not r.get("cells"):
            rows.append(f"| {r['size']:,} | not measured: {r.get('error', '?')[:200]} | " + " | ".join(["–"] * len(clients)) + " |")
            continue
        for kind in KINDS:
            cols = []
            for c in clients:
                cell = r["cells"].get(f"{kind}/{c}")
                if cell is None:
                    cols.append("–")
                    continue
                errors = {k: v for k, v in cell["statuses"].items() if k != "200"}
                shown = (f"{fmt(cell['p50_ms'])} / {fmt(cell['p95_ms'])} / {cell['req_per_s'] or 0:.1f}" if cell["ok"]
                         else "none answered")
                if errors:
                    shown += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) + f" of {cell['requests']})"
                cols.append(shown)
            rows.append(f"| {r['size']:,} | {kind} | " + " | ".join(cols) + " |")
    return "\n".join(rows)


def run(args, env: dict, work: Path, figures: dict) -> None:
    """Fill each size, serve it, measure it (into ``figures``)."""
    for k in [k for k in os.environ if k.startswith("LENSFLOW_")]:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("LENSFLOW_")})
    from lensflow.streams.settings import Settings
    from lensflow.streams.stack import apply_cql

    settings = Settings()
    cli = [sys.executable, "-m", cli_module()]
    for step in (["stack", "up"], ["models", "prepare", "minilm-l6-v2"]):  # both idempotent
        if subprocess.run(cli + step, env=env, check=False).returncode != 0:
            print(f"(`lensflow {' '.join(step)}` failed: going on with the stack and models as they are)", flush=True)
    apply_cql(settings)
    print(f"keyspace {settings.cassandra_keyspace}, Qdrant local mode in {settings.qdrant_path}, "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}", flush=True)

    from lensflow.agents.textembed import TextEmbedder
    from lensflow.streams.models import ModelCache

    embedder = TextEmbedder(ModelCache(settings.models_path)).load()
    library = Library(USER, max(args.sizes), args.faces, lambda words: embedder.predict(list(words)))
    figures.update({"cpu_count": os.cpu_count(), "machine": "2 cores, 24 GiB, CPU only; shared stack",
                     "started": datetime.now().astimezone().isoformat(timespec="seconds"), "args": {
                         k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "qdrant_client": _version("qdrant-client"), "inserts": [], "probes": [], "sizes": []})
    stored = 0
    for size in args.sizes:
        if size > stored:
            inserter = Inserter(settings, library, args.full_records, wave=args.wave)
            print(f"\n== inserting images {stored}..{size - 1} (Qdrant opened in {inserter.open_s:.1f} s)", flush=True)
            progress = Progress("insert", stored, size)
            t0, cpu0 = time.perf_counter(), time.process_time()
            step = args.probe_every or size
            insert_error = None
            try:
                at = stored
                while at < size:
                    nxt = min(size, (at // step + 1) * step)
                    asyncio.run(inserter.insert(at, nxt, progress))
                    at = nxt
                    if args.probe_every and (at % step == 0 or at == size):
                        probe = {"images": at, **probe_search(inserter, embedder, settings),
                                 "bench_rss_mib": round(rss_mib(os.getpid()) or 0)}
                        figures["probes"].append(probe)
                        print(f"  probe at {at}: in-process SearchService.page: text {fmt(probe['text'])}, like "
                              f"{fmt(probe['like'])}, tag {fmt(probe['tag'])}; keyword half of {probe['keyword_query']!r} "
                              f"sees {probe['keyword_full_matches_seen']} of the {probe['keyword_full_matches_stored']} "
                              f"images holding every word (bench RSS with Qdrant local in it: {probe['bench_rss_mib']} MiB)",
                              flush=True)
            except Exception as exc:
                insert_error = f"{type(exc).__name__}: {str(exc)[:800]}"
                print(f"  !! inserting stopped at ~{progress.last_n}: {insert_error}", flush=True)
            wall = time.perf_counter() - t0
            ins = {"from": stored, "to": size, "wall_s": round(wall, 1), "images_per_s": round((size - stored) / wall, 1),
                   "bench_cpu_s": round(time.process_time() - cpu0, 1), "generate_cpu_s": round(inserter.cpu["generate_s"], 1),
                   "qdrant_upsert_s": round(inserter.qdrant_s, 1), "retries": inserter.retries, "faces": inserter.faces_written, "curve": progress.curve,
                   "qdrant_open_s": round(inserter.open_s, 1), "error": insert_error}
            figures["inserts"].append(ins)
            print(f"  inserted {size - stored} images in {wall:.0f} s: {ins['images_per_s']:.0f} images/s "
                  f"(bench CPU {ins['bench_cpu_s']:.0f} s, of which building the records {ins['generate_cpu_s']:.0f} s; "
                  f"Qdrant upserts {ins['qdrant_upsert_s']:.0f} s of wall on its thread; "
                  f"{inserter.retries} retried writes; {inserter.faces_written} face points)", flush=True)
            t0, rss_open = time.perf_counter(), rss_mib(os.getpid())
            inserter.close()
            del inserter
            release_memory()
            ins["bench_rss_mib"] = {"with_qdrant": round(rss_open or 0), "after_close": round(rss_mib(os.getpid()) or 0)}
            print(f"  (Qdrant closed in {time.perf_counter() - t0:.1f} s; this process's RSS {ins['bench_rss_mib']['with_qdrant']} "
                  f"MiB with it open, {ins['bench_rss_mib']['after_close']} MiB after)", flush=True)
            if insert_error:
                figures["sizes"].append({"size": size, "error": f"insert: {insert_error}"})
                break
            stored = size
        result = measure_size(args, env, settings, library, size, work)
        result["breaks"] = breaks(result, args)
        figures["sizes"].append(result)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="library sizes, filled in order (default 10000,100000)")
    ap.add_argument("--clients", default="1,16", help="concurrent clients per cell (default 1,16)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per cell (default 8)")
    ap.add_argument("--min-requests", type=int, default=3, help="requests per cell at least, past --duration (default 3)")
    ap.add_argument("--cell-cap", type=float, default=30.0, help="no request of a cell starts after this many seconds (default 30)")
    ap.add_argument("--warmup", type=int, default=2, help="requests of each kind before measuring (default 2; none "
                    "started after 5 s)")
    ap.add_argument("--timeout", type=float, default=70.0, help="seconds a request may take (default 70: the service's own "
                    "deadlines are 10 s for the stores and 60 s for the model)")
    ap.add_argument("--ready-timeout", type=float, default=900.0, help="seconds the service may take to open the stores")
    ap.add_argument("--faces", type=int, default=300, help="face points (named people and clusters; default 300)")
    ap.add_argument("--probe-every", type=int, default=25_000, help="in-process search probe every N images (0: none)")
    ap.add_argument("--full-records", action="store_true", help="analysis_results with the two vectors in its "
                    "stage_records and result_json, as the join writes it (~45 KB an image; the search never reads it): "
                    "2-3x the bench's CPU per image")
    ap.add_argument("--wave", type=int, default=64, help="Cassandra image writes in flight (default 64)")
    ap.add_argument("--unusable-ms", type=float, default=2000.0, help="a cell with p95 over this is 'unusable' (default 2000)")
    ap.add_argument("--min-free-mib", type=float, default=2500.0, help="kill the service when the machine has less "
                    "memory available than this (default 2500; the bench reports it)")
    ap.add_argument("--keep", action="store_true", help="keep the keyspace and folders (printed)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results-api.json", help="write the figures here")
    args = ap.parse_args()
    args.sizes = sorted(int(x) for x in args.sizes.split(","))
    args.clients = [int(x) for x in args.clients.split(",")]

    def stop(signum, frame):  # SIGINT / SIGTERM: out through the cleanup (asyncio would swallow a plain SIGINT)
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    work = Path(tempfile.mkdtemp(prefix="lensflow-bench-api-"))
    env = bench_env("a", free_port(), work)
    env.update(LENSFLOW_API_USER_CONCURRENCY="64", LENSFLOW_API_USER_RATE="1000000")
    figures: dict = {}
    try:
        run(args, env, work, figures)
    finally:
        if args.keep:
            print(f"kept: keyspace {env['LENSFLOW_CASSANDRA_KEYSPACE']}, {work}")
        else:
            try:
                _cleanup(env)
            except Exception as exc:  # noqa: BLE001
                print(f"cleanup of keyspace {env['LENSFLOW_CASSANDRA_KEYSPACE']} failed: {exc}")
            shutil.rmtree(work, ignore_errors=True)

    results = figures["sizes"]
    print("\n== search latency (ms; p50 / p95 of answered requests; req/s answered)")
    md = table(results, args.clients)
    print(md)
    figures["table_markdown"] = md
    for r in results:
        extra = f", ready in {r['ready_s']} s" if "ready_s" in r else ""
        rss = f", service RSS {r.get('rss_loaded_mib')} MiB loaded / {r.get('rss_peak_mib')} MiB peak" if "rss_peak_mib" in r else ""
        print(f"  {r['size']:>7} images{extra}{rss}")
        for b in r.get("breaks", []):
            print(f"           unusable: {b}")
    first = results[0] if results else {}
    text1 = first.get("cells", {}).get(f"text/{args.clients[0]}")
    if text1 and first.get("size") == 10_000 and args.clients[0] == 1:
        met = text1["p95_ms"] is not None and text1["p95_ms"] < TARGET_TEXT_P95_MS
        figures["target_text_p95_10k_1_client"] = {"target_ms": TARGET_TEXT_P95_MS, "p95_ms": text1["p95_ms"], "met": met}
        print(f"  target: text search p95 < {TARGET_TEXT_P95_MS:.0f} ms at 10 000 images, 1 client: "
              f"{fmt(text1['p95_ms'])}: {'met' if met else 'not met'}")
    figures["finished"] = datetime.now().astimezone().isoformat(timespec="seconds")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
        print(f"figures: {args.json}")


def release_memory() -> None:
    """Give what the closed local-mode collection held back to the system (gc, then glibc's malloc_trim)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    main()
