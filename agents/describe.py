"""describe: images.aggregated → images.described — a grounded one-sentence caption and the
``semantic`` vector for text→image search.

A *derived* stage: it reads the join's phase-1 aggregate, because a grounded caption needs the
objects, the scene, the people and the text. No captioning weights are reachable from the registries
here, so the default captioner (``grounded``, versioned like a model) composes the sentence from
those results: objects counted and named, the place or indoor/outdoor, recognised people by name,
and a short quote of the text. It never says more than the stages found. The semantic vector is
all-MiniLM-L6-v2 over the caption plus tags, place, OCR text and people, one inference per batch.

``LENSFLOW_CAPTIONER`` selects the captioner: ``grounded`` (default), or ``onnx:/path/to/dir`` for a
generative image-to-text model exported to ONNX in a local directory (``captioner.OnnxCaptioner``:
the same runner base as every model; it captions the derivative's pixels, and the semantic vector
then covers its caption plus the same facts). A directory that is missing or lacks a file is a
configuration error at start-up, naming what is missing. ``transformers:/path`` is refused with how
to export that model to ONNX: transformers needs torch, which the runtime install leaves out.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lensflow.streams.avro_types import ImageDescribed, ModelRef, StageError
from lensflow.streams.errors import ErrorCode, StageFailure, Verdict, classify
from lensflow.streams.models import ModelCache, ModelError
from lensflow.streams.records import Status, result
from lensflow.streams.runner import Item, Outcome, Output, Stage, run
from lensflow.streams.topology import AGGREGATED, DESCRIBED

STAGE = "describe"
CAPTIONER = ModelRef(name="grounded-caption", version="1", sha256=None)
MIN_OBJECT_CONFIDENCE = 0.4
MAX_QUOTE_WORDS = 6
_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_PLURAL = {"person": "people", "knife": "knives", "mouse": "mice", "sheep": "sheep", "skis": "skis",
           "scissors": "scissors", "bus": "buses", "glass": "glasses", "wine glass": "wine glasses",
           "bench": "benches", "couch": "couches", "sandwich": "sandwiches", "toothbrush": "toothbrushes"}


def _plural(label: str, n: int) -> str:
    if n == 1:
        return label
    if label in _PLURAL:
        return _PLURAL[label]
    return label + ("es" if label.endswith(("s", "x", "ch", "sh")) else "s")


def _count(label: str, n: int) -> str:
    word = _NUMBERS[n] if n < len(_NUMBERS) else str(n)
    if n == 1:
        word = "an" if label[:1] in "aeiou" else "a"
    return f"{word} {_plural(label, n)}"


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _ok(rec: dict | None) -> dict | None:
    return rec if rec and rec.get("status") == "ok" else None


#: How a caption says where (the scene stage's place labels); others get "in a <place>".
PLACE_PHRASES = {
    "street": "on a street", "farm": "on a farm", "living": "in a living room", "landmark": "at a landmark",
    "harbor": "at a harbor", "beach": "on a beach", "snow": "in the snow", "lake": "by a lake",
    "mountain": "in the mountains", "railway": "at a railway", "market": "at a market", "desert": "in the desert",
    "underwater": "underwater", "palace": "at a palace", "bridge": "on a bridge", "airport": "at an airport",
    "mosque": "at a mosque", "temple": "at a temple", "castle": "at a castle", "city": "in a city",
    "office": "in an office",
}
#: A place label is said only when the scene stage is at least this sure of it.
MIN_PLACE_SCORE = 0.2


def place_phrase(place: str) -> str:
    if place in PLACE_PHRASES:
        return PLACE_PHRASES[place]
    return f"in {'an' if place[:1] in 'aeiou' else 'a'} {place}"


def geo_phrase(md: dict | None) -> str | None:
    """ "Prague, Czechia" from the metadata stage's reverse-geocoded place."""
    place = (md or {}).get("place") or {}
    parts = [p for p in (place.get("city"), place.get("country")) if p]
    return ", ".join(dict.fromkeys(parts)) or None


def year_of(md: dict | None) -> int | None:
    taken = (md or {}).get("taken_at")
    return getattr(taken, "year", None)


def caption(agg: dict) -> str:
    """One grammatical sentence from what the stages found, and nothing more. Pure.

    ``<who> [with <what>] [<where>] [in <city, country>][, in <year>][; the text reads "…"].``
    who: named people, then other people counted; what: confident concepts (the lexicon in
    ``agents/data/concepts.csv``: a rocket, a camera on a tripod) and counted objects, a concept
    replacing the one object it names more precisely; where: the scene's place when it is sure of it,
    else indoors/outdoors."""
    from .concepts import concepts_of

    faces, objects, scene, text, md = (_ok(agg.get(k)) for k in ("faces", "objects", "scene", "text", "metadata"))
    names = sorted({f["person_name"] for f in (faces or {}).get("faces", []) if f.get("person_name")})
    n_faces = len((faces or {}).get("faces", []))
    counts = Counter(d["label"] for d in (objects or {}).get("detections", []) if d["confidence"] >= MIN_OBJECT_CONFIDENCE)
    found = concepts_of((scene or {}).get("classes") or [])
    things: list[str] = []
    for c in found[:2]:
        if c.replaces and counts.get(c.replaces, 0) > 1:
            continue  # "two cars" says more than "a sports car"
        if c.replaces:
            counts.pop(c.replaces, None)
        things.append(c.phrase)
    n_people = max(counts.pop("person", 0), n_faces)
    people: list[str] = []
    if names:
        people.append(_join(names))
        unnamed = n_people - len(names)
        if unnamed > 0:
            people.append("another person" if unnamed == 1 else f"{_NUMBERS[min(unnamed, 10)]} other people")
    elif n_people:
        people.append(_count("person", n_people))
    for label, n in counts.most_common(max(0, 3 - len(things))):
        things.append(_count(label, n))
    place = where = None
    if scene:
        if scene.get("places") and scene["places"][0]["score"] >= MIN_PLACE_SCORE:
            place = scene["places"][0]["label"]
            where = place_phrase(place)
        elif scene.get("environment"):
            where = f"{scene['environment']['label']}s"  # indoors, outdoors
    if people and things:
        sentence = f"{_join(people)} with {_join(things)}"
    elif people or things:
        sentence = _join(people or things)
    elif place:
        sentence = "A photo taken"
    else:
        top = (scene or {}).get("classes") or []
        sentence = f"A photo of a {top[0]['label'].split(',')[0]}" if top and where is None else "A photo"
        if where:
            sentence = "A photo taken"
    if where:
        sentence += f" {where}"
    geo = geo_phrase(md)
    if geo:
        sentence += f" in {geo}"
    year = year_of(md)
    if year:
        sentence += f", in {year}" if geo else f" in {year}"
    sentence = sentence[0].upper() + sentence[1:]
    quote = " ".join(((text or {}).get("text") or "").split()[:MAX_QUOTE_WORDS])
    if quote:
        sentence += f'; the text reads "{quote}"'
    return sentence + "."


def semantic_text(agg: dict, cap: str) -> str:
    """What the semantic vector encodes: the caption plus every searchable fact."""
    from .concepts import concepts_of

    parts = [cap]
    scene = _ok(agg.get("scene"))
    if scene:
        parts += [lab["label"] for lab in scene.get("places", []) + scene.get("events", [])]
        parts += [tag for c in concepts_of(scene.get("classes", [])) for tag in c.tags]
        parts += [lab["label"].split(",")[0] for lab in scene.get("classes", [])[:3]]
    objects = _ok(agg.get("objects"))
    if objects:
        parts += sorted({d["label"] for d in objects.get("detections", []) if d["confidence"] >= MIN_OBJECT_CONFIDENCE})
    faces = _ok(agg.get("faces"))
    if faces:
        parts += sorted({f["person_name"] for f in faces.get("faces", []) if f.get("person_name")})
    md = _ok(agg.get("metadata"))
    if md:
        place = md.get("place") or {}
        parts += [p for p in (place.get("city"), place.get("region"), place.get("country")) if p]
        parts += [k for k in (md.get("keywords") or [])] + [md.get("title") or "", md.get("description") or ""]
    text = _ok(agg.get("text"))
    if text and text.get("text"):
        parts.append(text["text"][:300])
    return ". ".join(p for p in parts if p)


def check_captioner(setting: str) -> Path | None:
    """The generative captioner's directory (``onnx:DIR``), None for ``grounded``; a ModelError for
    anything else, saying what to do."""
    if setting == "grounded":
        return None
    kind, _, rest = setting.partition(":")
    if kind == "onnx" and rest:
        from .captioner import check_directory

        directory = Path(rest).expanduser()
        check_directory(directory)
        return directory
    if kind == "transformers" and rest:
        raise ModelError("LENSFLOW_CAPTIONER=transformers:… needs torch, which this build does not install: export the "
                         f"model to ONNX (optimum-cli export onnx --model {rest} --task image-to-text OUT) and set "
                         "LENSFLOW_CAPTIONER=onnx:OUT")
    raise ModelError(f"unknown LENSFLOW_CAPTIONER {setting!r}: use 'grounded' or 'onnx:/path/to/model/dir'")


class Describe(Stage):
    """The describe stage on the runner: one captioning + text-embedding call per batch, off the loop."""

    name = STAGE
    reads = (AGGREGATED,)
    expects = "ImageAggregated"

    def __init__(self, ctx):
        from .textembed import TextEmbedder

        super().__init__(ctx)
        settings = ctx.settings
        directory = check_captioner(settings.captioner)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="describe")
        self.embedder = TextEmbedder(ModelCache(settings.models_path), threads=settings.model_threads)
        self.captioner = None
        if directory is not None:
            from .captioner import OnnxCaptioner

            self.captioner = OnnxCaptioner(directory, threads=settings.model_threads, allow_gpu=settings.model_gpu)
        self.error: Exception | None = None
        self.metrics = ctx.metrics.stage(STAGE)

    @property
    def model_ref(self) -> ModelRef:
        return self.captioner.ref if self.captioner is not None else CAPTIONER

    def load(self) -> None:
        try:
            self.embedder.load()
            self.embedder.warmup("warm up")
            if self.captioner is not None:
                self.captioner.load()
                self.captioner.warmup()
        except Exception as exc:  # every image then fails with model_unavailable; the worker goes on
            self.error = exc
            self.log.error("model_unavailable", error=str(exc))

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, self.load)

    def generated(self, aggs: list[dict]) -> list[str | BaseException]:
        """The generative captioner's caption per aggregate, or why that image has none."""
        from lensflow.streams.pixel import DecodeLimits, decode_derivative

        images: list[Any] = []
        for agg in aggs:
            try:
                images.append(decode_derivative(self.ctx.storage, agg["prepared"], DecodeLimits.of(self.ctx), self.name))
            except Exception as exc:
                images.append(exc)
        ready = [im for im in images if not isinstance(im, BaseException)]
        caps = iter(self.captioner.predict(ready) if ready else [])
        return [im if isinstance(im, BaseException) else next(caps) for im in images]

    def describe_batch(self, aggs: list[dict]) -> list[tuple[str, list[float]] | BaseException]:
        """(caption, semantic vector) per aggregate, or the exception that failed it."""
        if self.error is not None:
            raise StageFailure(ErrorCode.MODEL_UNAVAILABLE, f"describe model unavailable: {self.error}")
        caps: list[str | BaseException] = self.generated(aggs) if self.captioner is not None else [caption(a) for a in aggs]
        good = [(a, c) for a, c in zip(aggs, caps) if not isinstance(c, BaseException)]
        vectors = iter(self.embedder.predict([semantic_text(a, c) for a, c in good]) if good else [])
        return [c if isinstance(c, BaseException) else (c, next(vectors)) for c in caps]

    def record(self, agg: dict, duration_ms: float, error: StageError | None = None, cap: str = "",
               vector: list[float] | None = None) -> Output:
        rec = result(ImageDescribed, STAGE, agg["image_id"], agg["user_id"], agg["run_id"], model=self.model_ref,
                     status=Status.FAILED if error else Status.OK, error=error, duration_ms=duration_ms,
                     caption=cap, text_model=self.embedder.ref, semantic_vector=vector or [])
        self.metrics.observe(duration_ms / 1000, rec.status)
        return Output(DESCRIBED, agg["image_id"], "ImageDescribed", rec)

    def failed(self, item: Item, verdict: Verdict) -> list[Output]:
        return [self.record(item.record, 0.0, verdict.as_error())]

    async def process(self, items: list[Item]) -> list[Outcome]:
        aggs = [i.record for i in items]
        t0 = time.perf_counter()
        got = await asyncio.get_running_loop().run_in_executor(self.pool, self.ctx.metrics.cpu_timed, STAGE,
                                                               self.describe_batch, aggs)
        ms = (time.perf_counter() - t0) * 1000 / len(aggs)
        outcomes = []
        for item, outcome in zip(items, got):
            if isinstance(outcome, BaseException):
                verdict = classify(outcome)
                self.log.warning("image_failed", image_id=item.image_id, code=verdict.code, reason=verdict.message)
                outcomes.append(Outcome([self.record(item.record, ms, verdict.as_error())],
                                        verdict if verdict.dead_letter else None))
            else:
                outcomes.append(Outcome([self.record(item.record, ms, cap=outcome[0], vector=outcome[1])]))
        return outcomes


def register(ctx, stages: list[str] | None = None) -> None:
    run(ctx, Describe(ctx))
