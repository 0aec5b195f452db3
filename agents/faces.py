"""faces: the faces stage's agent: detect and encode per batch (one predict call of the model
``LENSFLOW_FACES_MODEL`` chooses: ``agents/face_models.py``), then give each face the same user's person
from the gallery in Qdrant (``streams/faces_store.py``) and store it."""

from __future__ import annotations

from lensflow.streams.faces_store import FaceGallery
from lensflow.streams.models import ModelCache

from .face_models import face_model, match_threshold

STAGE = "faces"


def register(ctx, stages: list[str] | None = None) -> None:
    """The faces agent: detect + encode per batch (one predict call), then match each image's faces
    against the same user's gallery in Qdrant ``faces`` and store them (on the Qdrant thread)."""
    from lensflow.streams.avro_types import Box, Face, Point
    from lensflow.streams.pixel import pixel_stage, scale_box

    ctx.stores.want("qdrant")
    cache = ModelCache(ctx.settings.models_path)
    model = face_model(ctx.settings, cache)  # not loaded here: the stage loads its own (factory below)
    threshold = match_threshold(ctx.settings, model)

    def gallery_assign(client, user_id: str, image_id: str, faces: list[dict]) -> list[dict]:
        return FaceGallery(client, model=model.name).assign(user_id, image_id, faces, threshold)

    async def fields(faces: list[dict], info: dict) -> dict:
        sx, sy = info["scale"]
        # the gallery stores the box in Qdrant's JSON payload: it gets plain dicts
        scaled = [{**f, "box": scale_box(f["box"], info["scale"]).to_avro(),
                   "landmarks": [{"x": p["x"] * sx, "y": p["y"] * sy} for p in f["landmarks"]]} for f in faces]
        assigned = await ctx.stores.qdrant.call(gallery_assign, info["user_id"], info["image_id"], scaled)
        return {"faces": [Face(face_id=f["face_id"], box=Box.from_avro(f["box"]), confidence=float(f.get("confidence", 1.0)),
                               landmarks=[Point(x=p["x"], y=p["y"]) for p in f["landmarks"]],
                               encoding=[float(x) for x in f["encoding"]], person_id=f.get("person_id"),
                               person_name=f.get("person_name"), match_distance=f.get("match_distance"))
                          for f in assigned]}

    pixel_stage(ctx, STAGE, lambda: face_model(ctx.settings, cache), {STAGE: fields})
