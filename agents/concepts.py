"""Concepts: what the scene stage's confident ImageNet classes mean, in words a caption and a search
can use, through a curated lexicon kept as data (``agents/data/concepts.csv``, format in its header).

ImageNet's classes are too fine (``missile``, ``projectile``, ``space shuttle``) or too odd
(``tripod`` for a photographer behind a camera) to show as they are; the lexicon groups them into a
concept ("rocket") with a noun phrase ("a rocket") and extra tags ("camera" + "tripod"). A concept's
score is the sum of the probabilities of its classes among those the scene stage kept, so evidence
spread over related classes adds up. Pure; the table is read and checked once.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

LEXICON = Path(__file__).resolve().parent / "data" / "concepts.csv"
#: A concept is named (caption, tags) when its classes' probabilities add up to at least this.
MIN_SCORE = 0.3
HEADER = ["keys", "note", "concept", "phrase", "replaces", "also"]


@dataclass(frozen=True)
class Entry:
    concept: str
    phrase: str
    replaces: str | None
    also: tuple[str, ...]


@dataclass(frozen=True)
class Concept:
    name: str
    phrase: str
    score: float
    replaces: str | None
    tags: tuple[str, ...]  # the concept's name first, then its extra tags


def _keys(text: str, where: str) -> list[int]:
    out = []
    for part in filter(None, (p.strip() for p in text.split("+"))):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"{where}: bad key {part!r}") from None
        if not 0 <= a <= b < 1000:
            raise ValueError(f"{where}: keys must be class indices 0-999, got {part!r}")
        out += range(a, b + 1)
    if not out:
        raise ValueError(f"{where}: no keys")
    return out


def load_lexicon(path: Path | str = LEXICON) -> dict[str, Entry]:
    """ImageNet class name (as the scene stage reports it) -> lexicon entry. Checks every row."""
    from .scene import _first_name, class_names

    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        lines = [ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    if reader.fieldnames != HEADER:
        raise ValueError(f"{path}: header must be {','.join(HEADER)}, got {reader.fieldnames}")
    names = class_names()
    out: dict[str, Entry] = {}
    for n, row in enumerate(reader, start=1):
        where = f"{path.name} row {n}"
        keys = _keys(row["keys"], where)
        note = (row["note"] or "").strip()
        if note != _first_name(keys[0]):
            raise ValueError(f"{where}: class {keys[0]} is {_first_name(keys[0])!r}, the note says {note!r}")
        concept, phrase = row["concept"].strip(), row["phrase"].strip()
        if not concept or not phrase:
            raise ValueError(f"{where}: concept and phrase are required")
        entry = Entry(concept, phrase, row["replaces"].strip() or None,
                      tuple(t.strip() for t in (row["also"] or "").split("+") if t.strip()))
        for k in keys:
            if names[k] in out:
                raise ValueError(f"{where}: class {k} ({names[k]}) is already in the lexicon")
            out[names[k]] = entry
    return out


@functools.lru_cache(maxsize=1)
def lexicon() -> dict[str, Entry]:
    return load_lexicon()


def concepts_of(classes: Iterable[dict], min_score: float = MIN_SCORE) -> list[Concept]:
    """The confident concepts among scene classes (``[{"label", "score"}]``), most confident first."""
    lex = lexicon()
    scores: dict[str, float] = {}
    best: dict[str, tuple[float, Entry]] = {}
    for c in classes or ():
        entry = lex.get(c["label"])
        if entry is None:
            continue
        score = float(c["score"])
        scores[entry.concept] = scores.get(entry.concept, 0.0) + score
        if entry.concept not in best or score > best[entry.concept][0]:
            best[entry.concept] = (score, entry)
    out = []
    for name, total in scores.items():
        if total >= min_score:
            entry = best[name][1]
            out.append(Concept(name, entry.phrase, round(min(total, 1.0), 4), entry.replaces,
                               tuple(dict.fromkeys((name,) + entry.also))))
    return sorted(out, key=lambda c: (-c.score, c.name))
