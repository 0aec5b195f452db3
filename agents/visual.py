"""scene + embedding: one EfficientNet-Lite0 forward pass per image, two results.

The network gives ImageNet-1k logits (→ ``scene``: indoor/outdoor, places, events through the data
table ``agents/data/scene_map.csv``) and the 1280-d pooled features (→ ``embedding``: the L2-normalised
``visual`` vector for image→image search). The design asks stages that share a network to share
one forward pass and still publish separate records: this module is that agent; the domain logic
stays in ``scene.py`` and ``embedding.py``. Scene rules that need the objects stage's detections (a
cake and people → birthday) are not applied here, since objects runs in parallel; the scene map
supports them for a derived pass.
"""

from __future__ import annotations

from lensflow.streams.avro_types import Label
from lensflow.streams.models import ModelCache
from lensflow.streams.pixel import pixel_stage

from . import embedding, scene
from .backbones.efficientnet_lite0 import EfficientNetLite0


def scene_fields(pred, info: dict) -> dict:
    """The SceneResult fields: ``scene.classify``'s labels (plain mappings, which the join's ``refine``
    shares with decoded records) as ``Label``-s."""
    logits, _ = pred
    s = scene.classify(logits)
    env = s["environment"]
    return {"environment": Label.from_avro(env) if env else None, "places": [Label.from_avro(x) for x in s["places"]],
            "events": [Label.from_avro(x) for x in s["events"]], "classes": [Label.from_avro(x) for x in s["classes"]]}


def embedding_fields(pred, info: dict) -> dict:
    _, features = pred
    vector = embedding.visual_vector(features)
    return {"vector_name": embedding.VECTOR_NAME, "dim": len(vector), "vector": vector}


def register(ctx, stages: list[str] | None = None) -> None:
    stages = stages or ["scene", "embedding"]
    outputs = {"scene": scene_fields, "embedding": embedding_fields}
    cache = ModelCache(ctx.settings.models_path)
    pixel_stage(ctx, "visual", lambda: EfficientNetLite0(cache, threads=ctx.settings.model_threads,
                                                          allow_gpu=ctx.settings.model_gpu),
                {s: outputs[s] for s in stages})
