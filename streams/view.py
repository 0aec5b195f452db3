"""What a user sees of one image's analysis, pure: from the stored aggregate (``analysis_results.result_json``,
written by the join) to the sections ``lensflow show`` prints (``analysis_of``), the aggregate without its
vectors (``without_vectors``: ``show --json`` stays readable; vectors live in Qdrant) and the boxes
``show --render`` draws (``render``).

Boxes in stage results are in the pixels of the original image after its EXIF orientation was applied
(``original_width`` × ``original_height``); ``render`` draws them on any copy of it (the stored
derivative is one), scaled.
"""

from __future__ import annotations

import math
from typing import Any

from PIL import ImageDraw, ImageFont

#: Scene classes shown (the stored aggregate keeps all the stage returned).
TOP_CLASSES = 5
#: Characters of OCR text in the summary that ``images.analyzed`` carries.
EXCERPT_CHARS = 280

VECTOR_FIELDS = {"embedding": ("vector",), "describe": ("semantic_vector",)}


def _ok(rec: Any) -> bool:
    return isinstance(rec, dict) and rec.get("status") == "ok"


def _labels(items: list[dict] | None, limit: int | None = None) -> list[dict]:
    out = [{"label": i["label"], "score": round(float(i["score"]), 4)} for i in (items or [])]
    return out[:limit] if limit else out


def _box(box: dict | None) -> dict | None:
    return None if not box else {k: round(float(box[k]), 1) for k in ("x1", "y1", "x2", "y2")}


def analysis_of(aggregate: dict) -> dict:
    """Every section of the analysis, each None when its stage did not run or failed (its status says
    why): caption, objects, faces, text, scene, safety, metadata (with place)."""
    results = aggregate.get("results") or {}
    prepared = aggregate.get("prepared") or {}
    out: dict[str, Any] = {"caption": None, "objects": None, "faces": None, "text": None, "scene": None,
                           "safety": None, "metadata": None}
    described = results.get("describe")
    if _ok(described):
        out["caption"] = described.get("caption") or None
    objects = results.get("objects")
    if _ok(objects):
        out["objects"] = [{"label": d["label"], "confidence": round(float(d["confidence"]), 4), "box": _box(d.get("box"))}
                          for d in sorted(objects.get("detections") or [], key=lambda d: -float(d["confidence"]))]
    faces = results.get("faces")
    if _ok(faces):
        out["faces"] = [{"box": _box(f.get("box")), "confidence": round(float(f.get("confidence") or 0.0), 4),
                         "person_id": f.get("person_id"), "person_name": f.get("person_name"),
                         "match_distance": f.get("match_distance")} for f in faces.get("faces") or []]
    text = results.get("text")
    if _ok(text):
        out["text"] = {"text": text.get("text") or "", "language": text.get("language"),
                       "lines": [{"text": ln["text"], "confidence": round(float(ln.get("confidence") or 0.0), 4),
                                  "box": _box(ln.get("box"))} for ln in text.get("lines") or []]}
    scene = results.get("scene")
    if _ok(scene):
        env = scene.get("environment")
        out["scene"] = {"environment": {"label": env["label"], "score": round(float(env["score"]), 4)} if env else None,
                        "places": _labels(scene.get("places")), "events": _labels(scene.get("events")),
                        "classes": _labels(scene.get("classes"), TOP_CLASSES)}
    safety = results.get("safety")
    if _ok(safety):
        out["safety"] = {"nsfw_score": round(float(safety.get("nsfw_score") or 0.0), 4), "unsafe": bool(safety.get("unsafe"))}
    md = results.get("metadata")
    if _ok(md):
        keys = ("camera_make", "camera_model", "lens_make", "lens_model", "taken_at", "taken_at_local", "tz_offset",
                "exposure_time_s", "f_number", "iso", "focal_length_mm", "software", "artist", "copyright",
                "title", "description", "keywords", "gps", "place")
        out["metadata"] = {k: md[k] for k in keys if md.get(k) not in (None, [], "")}
    out["size"] = {"width": prepared.get("original_width"), "height": prepared.get("original_height")}
    return out


def summary_of(analysis: dict) -> dict:
    """The short form ``images.analyzed`` carries for consumers (ImageAnalyzed.summary)."""
    text = (analysis.get("text") or {}).get("text") or ""
    faces = analysis.get("faces") or []
    md = analysis.get("metadata") or {}
    place = md.get("place") or {}
    safety = analysis.get("safety")
    return {
        "text_excerpt": (text[:EXCERPT_CHARS - 1] + "…") if len(text) > EXCERPT_CHARS else (text or None),
        "language": (analysis.get("text") or {}).get("language"),
        "objects": len(analysis.get("objects") or []),
        "faces": len(faces),
        "people": sorted({f["person_name"] for f in faces if f.get("person_name")}),
        "text_lines": len((analysis.get("text") or {}).get("lines") or []),
        "place": ", ".join(p for p in (place.get("city"), place.get("region"), place.get("country")) if p) or None,
        "nsfw_score": safety["nsfw_score"] if safety else None,
    }


def without_vectors(aggregate: dict) -> dict:
    """The stored aggregate with every vector replaced by its length (``<field>_dim``)."""
    results = dict(aggregate.get("results") or {})
    for stage, fields in VECTOR_FIELDS.items():
        rec = results.get(stage)
        if isinstance(rec, dict):
            rec = dict(rec)
            for f in fields:
                if rec.get(f) is not None:
                    rec[f"{f}_dim"] = len(rec.pop(f))
            results[stage] = rec
    faces = results.get("faces")
    if isinstance(faces, dict) and faces.get("faces"):
        results["faces"] = {**faces, "faces": [{**{k: v for k, v in f.items() if k != "encoding"},
                                                 "encoding_dim": len(f.get("encoding") or [])} for f in faces["faces"]]}
    return {**aggregate, "results": results}


# -- drawing ---------------------------------------------------------------------------------------

COLOURS = {"object": (255, 176, 0), "face": (0, 200, 255), "text": (120, 255, 120)}


def document_of(image: dict) -> dict:
    """A stored image (``CassandraStore.image``) as ``lensflow show --json`` prints it and the read service
    answers it: the row, its tags and stages, the analysis sections (``analysis_of``) and the stored
    aggregate without its vectors. ``image`` is changed in place and returned."""
    aggregate = image.pop("aggregate", None)
    image["analysis"] = analysis_of(aggregate) if aggregate else None
    image["aggregate"] = without_vectors(aggregate) if aggregate else None
    return image


def boxes_of(analysis: dict) -> list[tuple[str, dict, str]]:
    """(kind, box, label) of everything that has a box."""
    out = []
    for o in analysis.get("objects") or []:
        if o.get("box"):
            out.append(("object", o["box"], f"{o['label']} {o['confidence']:.2f}"))
    for f in analysis.get("faces") or []:
        if f.get("box"):
            out.append(("face", f["box"], f.get("person_name") or (f.get("person_id") or "face")[:8]))
    for ln in (analysis.get("text") or {}).get("lines") or []:
        if ln.get("box"):
            out.append(("text", ln["box"], ln["text"][:40]))
    return out


def render(image, analysis: dict):
    """A copy of ``image`` (PIL, oriented) with the object, face and text boxes drawn and labelled."""

    img = image.convert("RGB").copy()
    size = analysis.get("size") or {}
    sx = img.width / float(size.get("width") or img.width)
    sy = img.height / float(size.get("height") or img.height)
    draw = ImageDraw.Draw(img)
    width = max(2, int(round(max(img.size) / 400)))
    font_size = max(12, int(round(max(img.size) / 60)))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for kind, box, label in boxes_of(analysis):
        colour = COLOURS[kind]
        x1, y1, x2, y2 = box["x1"] * sx, box["y1"] * sy, box["x2"] * sx, box["y2"] * sy
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        ty = y1 - (bottom - top) - 2 * width if y1 - (bottom - top) - 2 * width >= 0 else y2 + width
        draw.rectangle((x1, ty, x1 + (right - left) + 2 * width, ty + (bottom - top) + 2 * width), fill=colour)
        draw.text((x1 + width - left, ty + width - top), label, fill=(0, 0, 0), font=font)
    return img
