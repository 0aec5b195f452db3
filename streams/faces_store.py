"""The ``faces`` collection in Qdrant: a user's faces and people, whichever process asks (the faces
stage assigns each detected face a person; the read service enrols, names and lists people). It sits
in the store layer beside the ``images`` collection's calls (``streams/store.py``), so neither the
stage nor the read service reaches into the other.

The match thresholds are the models' own (``agents/face_models.py`` defines the models and checks that its
names and thresholds are these): a gallery compares encodings of one model only.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Sequence

import numpy as np
from qdrant_client import models as m

from .records import LENSFLOW_NS
from .store import FACE_DIM

COLLECTION = "faces"
#: The model of stored points that have no ``model`` in their payload (all were dlib's: ``FaceModel.name``).
LEGACY_MODEL = "dlib-resnet-v1"
#: ``Model.name`` -> the distance under which two of its encodings are the same person: dlib's
#: documented 0.6; SFace's 1.128 (OpenCV Zoo's L2 threshold for face_recognition_sface).
MATCH_THRESHOLDS = {"dlib-resnet-v1": 0.6, "yunet-sface": 1.128}


def distance(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


# -- gallery -----------------------------------------------------------------------------------

def face_point_id(user_id: str, image_id: str, index: int) -> str:
    """Point id (and ``face_id``) of face ``index`` of a user's image: stable, so re-analysis upserts in
    place, and bound to the user, so another user's image with the same id never overwrites it."""
    return str(uuid.uuid5(LENSFLOW_NS, f"face/{user_id}/{image_id}/{index}"))


def new_person_id(user_id: str, first_face_id: str, model: str | None = None) -> str:
    """A clustered person's id, from its first face (and the model, but for dlib's: ids stay as they
    were): a face re-analysed by another model, whose point id is the same, starts another person."""
    scope = "" if model in (None, LEGACY_MODEL) else f"{model}/"
    return str(uuid.uuid5(LENSFLOW_NS, f"person/{scope}{user_id}/{first_face_id}"))


def _named_person_id(user_id: str, name: str) -> str:
    return str(uuid.uuid5(LENSFLOW_NS, f"person/{user_id}/name/{name}"))


def _vector(encoding: Sequence[float]) -> list[float]:
    v = [float(x) for x in encoding]
    if len(v) != FACE_DIM:
        raise ValueError(f"face encoding has {len(v)} values, expected {FACE_DIM}")
    return v


class FaceGallery:
    """A user's faces and people in the Qdrant ``faces`` collection (client passed in: a server, or
    local mode), seen through one model: ``model`` (a ``Model.name``) is written on every point and
    every query is filtered by it, so encodings of two models are never compared. Points without a
    ``model`` (stored before it was recorded) are dlib's. ``enroll``, ``match`` and ``assign`` need a
    model; ``rename`` (a person, whatever model found it) and, without one, ``people`` do not.
    Synchronous; call it from the one thread that owns the client."""

    #: Candidates fetched per query; more than one so a person already taken in the image can be skipped.
    CANDIDATES = 16
    #: A stored point with a descriptor this close (float32 round-off) is the same face analysed again.
    SAME_FACE = 1e-3

    def __init__(self, client, collection: str = COLLECTION, create: bool = True, *, model: str | None = None):
        self.client = client
        self.collection = collection
        self.model = model
        if create:
            self.ensure()

    def ensure(self) -> None:
        if not self.client.collection_exists(self.collection):
            self.client.create_collection(self.collection,
                                          vectors_config=m.VectorParams(size=FACE_DIM, distance=m.Distance.EUCLID))
        if getattr(self.client, "_client", None).__class__.__name__ != "QdrantLocal":  # indexes only matter on a server
            for field in ("user_id", "image_id", "person_id", "model"):
                self.client.create_payload_index(self.collection, field, m.PayloadSchemaType.KEYWORD)

    # filters ------------------------------------------------------------------------------------
    @staticmethod
    def _is(key: str, value: Any):
        return m.FieldCondition(key=key, match=m.MatchValue(value=value))

    def _space(self):
        """The condition "stored by this gallery's model" (points without a model are dlib's)."""
        if self.model is None:
            raise ValueError("this FaceGallery has no model: pass model=<Model.name> to compare encodings")
        if self.model != LEGACY_MODEL:
            return self._is("model", self.model)
        return m.Filter(should=[self._is("model", self.model), m.IsEmptyCondition(is_empty=m.PayloadField(key="model"))])

    def _filter(self, user_id: str, named: bool | None = None, exclude_image: str | None = None):
        must: list[Any] = [self._is("user_id", user_id), self._space()]
        must_not: list[Any] = []
        unnamed = m.IsEmptyCondition(is_empty=m.PayloadField(key="person_name"))
        if named is True:
            must_not.append(unnamed)
        elif named is False:
            must.append(unnamed)
        if exclude_image is not None:  # the image's own detected faces (not enrolment references from it)
            must_not.append(m.Filter(must=[self._is("image_id", exclude_image), self._is("enrolled", False)]))
        return m.Filter(must=must, must_not=must_not or None)

    def _nearest(self, vector: list[float], flt, threshold: float, limit: int):
        return self.client.query_points(self.collection, query=vector, query_filter=flt, limit=limit,
                                        score_threshold=threshold, with_payload=True).points

    # API ----------------------------------------------------------------------------------------
    def enroll(self, user_id: str, name: str, encoding: Sequence[float], image_id: str | None = None,
               threshold: float | None = None) -> str:
        """Add a named reference face; returns the person id (an existing person of that name for this
        user, else a new one). Enrolling the same descriptor again is a no-op. The user's unnamed
        people with a face within ``threshold`` (default: the model's) of the reference are given the
        name too: photos analysed before the enrolment are found by ``search --person NAME``."""
        if not name:
            raise ValueError("enroll needs a name")
        vector = _vector(encoding)
        self._space()  # a model is required
        # a name is the user's, whatever model: a new model's reference joins the person of that name
        found, _ = self.client.scroll(self.collection, scroll_filter=m.Filter(
            must=[self._is("user_id", user_id), self._is("person_name", name)]), limit=1, with_payload=True)
        person_id = found[0].payload["person_id"] if found else _named_person_id(user_id, name)
        digest = hashlib.sha256(np.asarray(vector, dtype="<f4").tobytes()).hexdigest()
        point_id = str(uuid.uuid5(LENSFLOW_NS, f"face/enrolled/{user_id}/{image_id or ''}/{digest}"))
        self.client.upsert(self.collection, wait=True, points=[m.PointStruct(id=point_id, vector=vector, payload={
            "user_id": user_id, "image_id": image_id, "face_index": None, "box": None, "person_id": person_id,
            "person_name": name, "enrolled": True, "match_distance": None, "model": self.model})])
        for hit in self._nearest(vector, self._filter(user_id, named=False), self._threshold(threshold), self.CANDIDATES):
            if hit.payload.get("person_id") and hit.payload["person_id"] != person_id:
                self.rename(user_id, hit.payload["person_id"], name)
        return person_id

    def _threshold(self, threshold: float | None) -> float:
        if threshold is not None:
            return threshold
        if self.model not in MATCH_THRESHOLDS:
            raise ValueError(f"no default match threshold for model {self.model!r}: pass one")
        return MATCH_THRESHOLDS[self.model]

    def match(self, user_id: str, encoding: Sequence[float], threshold: float | None = None
              ) -> tuple[str, str, float] | None:
        """The nearest named person of this user within ``threshold`` (default: the model's):
        (person_id, name, distance)."""
        threshold = self._threshold(threshold)
        hits = self._nearest(_vector(encoding), self._filter(user_id, named=True), threshold, 1)
        if not hits:
            return None
        return hits[0].payload["person_id"], hits[0].payload["person_name"], float(hits[0].score)

    def assign(self, user_id: str, image_id: str, faces: list[dict[str, Any]], threshold: float | None = None
               ) -> list[dict[str, Any]]:
        """Give every face of an image a person, store each face as a point, and return copies of the
        faces with ``face_id``, ``person_id``, ``person_name`` and ``match_distance`` filled in.
        Points of this image left over from an earlier analysis with more faces (or by another
        model: the points of an image are those of its latest analysis) are deleted."""
        threshold = self._threshold(threshold)
        self._space()  # a model is required

        ids = [face_point_id(user_id, image_id, i) for i in range(len(faces))]
        existing = {str(p.id): p for p in self.client.retrieve(self.collection, ids=ids, with_payload=True,
                                                               with_vectors=True)} if ids else {}
        taken: set[str] = set()
        out, points = [], []
        for index, (face, pid) in enumerate(zip(faces, ids)):
            vector = _vector(face["encoding"])
            person_id = name = dist = None
            old = existing.get(pid)
            if (old is not None and old.payload.get("user_id") == user_id and old.payload.get("person_id")
                    and (old.payload.get("model") or LEGACY_MODEL) == self.model
                    and old.payload["person_id"] not in taken and old.vector is not None
                    and distance(old.vector, vector) < self.SAME_FACE):
                person_id, name, dist = old.payload["person_id"], old.payload.get("person_name"), old.payload.get("match_distance")
            else:
                for named in (True, False):
                    hits = self._nearest(vector, self._filter(user_id, named=named, exclude_image=image_id),
                                         threshold, self.CANDIDATES)
                    hit = next((h for h in hits if h.payload["person_id"] not in taken), None)
                    if hit is not None:
                        person_id, name, dist = hit.payload["person_id"], hit.payload.get("person_name"), float(hit.score)
                        break
                if person_id is None:
                    person_id = new_person_id(user_id, pid, self.model)
            taken.add(person_id)
            out.append({**face, "face_id": pid, "person_id": person_id, "person_name": name, "match_distance": dist})
            points.append(m.PointStruct(id=pid, vector=vector, payload={
                "user_id": user_id, "image_id": image_id, "face_index": index, "box": face.get("box"),
                "person_id": person_id, "person_name": name, "enrolled": False, "match_distance": dist,
                "model": self.model}))
        if points:
            self.client.upsert(self.collection, points=points, wait=True)
        stale = m.Filter(must=[self._is("user_id", user_id), self._is("image_id", image_id), self._is("enrolled", False)],
                         must_not=[m.HasIdCondition(has_id=ids)] if ids else None)
        self.client.delete(self.collection, points_selector=m.FilterSelector(filter=stale), wait=True)
        return out

    def rename(self, user_id: str, person_id: str, name: str | None) -> int:
        """Set (or with ``None``/"" clear) the name of a person on all its points; returns how many.
        The person id is unchanged, so earlier matches stay matched."""
        flt = self._person_filter(user_id, person_id)
        count = self.client.count(self.collection, count_filter=flt, exact=True).count
        if count:
            self.client.set_payload(self.collection, payload={"person_name": name or None}, points=flt, wait=True)
        return count

    def people(self, user_id: str) -> dict[str, dict[str, Any]]:
        """person_id → {"name", "faces", "images"} for one user (a scroll over the user's points, those
        of the gallery's model when it has one)."""
        people: dict[str, dict[str, Any]] = {}
        offset = None
        must = [self._is("user_id", user_id)] + ([self._space()] if self.model is not None else [])
        while True:
            batch, offset = self.client.scroll(self.collection, scroll_filter=m.Filter(must=must),
                                               limit=256, offset=offset, with_payload=True)
            for p in batch:
                entry = people.setdefault(p.payload["person_id"], {"name": None, "faces": 0, "images": set()})
                entry["name"] = entry["name"] or p.payload.get("person_name")
                entry["faces"] += 1
                if p.payload.get("image_id") and not p.payload.get("enrolled"):
                    entry["images"].add(p.payload["image_id"])
            if offset is None:
                return people

    def _person_filter(self, user_id: str, person_id: str):
        return m.Filter(must=[self._is("user_id", user_id), self._is("person_id", person_id)])
