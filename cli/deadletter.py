"""`lensflow deadletter list|show|replay`: the commands over ``streams/deadletter.py`` (reading and
replay planning)."""

from __future__ import annotations

import json
import time
from typing import Optional

import typer


from .app import deadletter_app
from .core import CliError, Table, emit, err, friendly, out, progress, settings
import functools

from lensflow.streams.deadletter import (DeadLetterError, Filter, Letter, _abbreviate, _aware, _chronological, _when, expand,
                                        jsonable, letter_id, parse_letter_id, parse_since, plan_replay, read_letters,
                                        read_one, summary)

from .events import await_analyzed


def _friendly(fn):
    """``friendly``, with the dead-letter reader's own errors as one-line CLI errors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DeadLetterError as exc:
            raise CliError(str(exc)) from None

    return friendly(wrapper)


def _filter(stage: str | None, code: str | None, since: str | None, image: str | None, ids: list[str] | None = None) -> Filter:
    from lensflow.streams.errors import ErrorCode
    from lensflow.streams.topology import STAGES

    if stage is not None and stage not in STAGES:
        raise CliError(f"--stage {stage!r}: unknown; stages: {', '.join(STAGES)}")
    known = {str(c) for c in ErrorCode}
    if code is not None and code not in known:
        raise CliError(f"--code {code!r}: unknown; codes: {', '.join(sorted(known))}")
    try:
        when = parse_since(since) if since else None
        names = frozenset(letter_id(*parse_letter_id(x)) for x in ids or [])
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return Filter(stage=stage, code=code, since=when, image=image, ids=names)


def _line(letter: Letter) -> str:
    dl = letter.record
    if dl is None:
        return f"{letter.id:<8} {_when(letter.failed_at)}  (undecodable dead letter: {letter.error})"
    err = dl.get("error") or {}
    source = f"{dl.get('topic')}/{dl.get('partition')}@{dl.get('offset')}"
    return (f"{letter.id:<8} {_when(letter.failed_at)}  {dl.get('stage') or '-':<10} {err.get('code') or '-':<14} "
            f"{dl.get('image_id') or '-':<36}  {source}  {err.get('message') or ''}")


StageOpt = typer.Option(None, "--stage", help="Only dead letters of this stage (preprocess, join, objects, …).")
CodeOpt = typer.Option(None, "--code", help="Only this error code (fetch_failed, poison, internal, …).")
SinceOpt = typer.Option(None, "--since", help="Only those failed since: an age (30m, 2h, 1d) or an ISO date/datetime (UTC unless an offset is given).")
ImageOpt = typer.Option(None, "--image", help="Only this image id.")
JsonOpt = typer.Option(False, "--json", help="JSON lines.")


@deadletter_app.command("list")
@_friendly
def list_(stage: Optional[str] = StageOpt, code: Optional[str] = CodeOpt, since: Optional[str] = SinceOpt,
          image: Optional[str] = ImageOpt, as_json: bool = JsonOpt) -> None:
    """One line per dead letter (id PARTITION:OFFSET, time, stage, code, image, source record, message), then a count."""
    from lensflow.streams.codec import Codec

    s = settings()
    flt = _filter(stage, code, since, image)
    codec = Codec.for_settings(s)
    letters = sorted(flt.select(read_letters(s, codec, flt.since, progress=progress(as_json))), key=_chronological)
    for letter in letters:
        emit(as_json, summary(letter), _line(letter))
    undecodable = sum(1 for x in letters if x.record is None)
    count = f"{len(letters)} dead letter(s)" + (f", {undecodable} undecodable" if undecodable else "")
    (err if as_json else out).print(count, highlight=False)


@deadletter_app.command("show")
@_friendly
def show(letter: str = typer.Argument(..., help="PARTITION:OFFSET of the dead letter (as `list` prints it)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """One dead letter whole: why, where from, its original record and every input, decoded."""
    from lensflow.streams.codec import Codec

    s = settings()
    try:
        partition, offset = parse_letter_id(letter)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    codec = Codec.for_settings(s)
    got = read_one(s, codec, partition, offset)
    if got.record is None:
        raise CliError(f"dead letter {got.id} does not decode: {got.error}")
    full = jsonable(expand(got.record, codec))
    if as_json:
        print(json.dumps({"id": got.id, **full}, indent=2))  # partition/offset/topic: the source record's
        return
    dl, err = got.record, got.record.get("error") or {}
    table = Table(title=f"dead letter {got.id}", show_header=False)
    rows = [("stage", dl.get("stage")), ("code", err.get("code")), ("message", err.get("message")),
            ("retryable", err.get("retryable")), ("attempts", err.get("attempts")), ("failed_at", _when(got.failed_at)),
            ("first_failed_at", _when(_aware(dl.get("first_failed_at"))) if dl.get("first_failed_at") else None),
            ("image_id", dl.get("image_id")), ("user_id", dl.get("user_id")), ("run_id", dl.get("run_id")),
            ("record", dl.get("record")), ("source", f"{dl.get('topic')} partition {dl.get('partition')} offset {dl.get('offset')}"),
            ("key", full.get("key")), ("inputs", len(full["inputs"]))]
    for k, v in rows:
        if v is not None:
            table.add_row(k, str(v))
    out.print(table)
    value = full["value"]
    out.print(f"original record: {value['record'] or 'not decodable (' + str(value['error']) + ')'}", highlight=False)
    print(json.dumps(_abbreviate(value.get("decoded", {"hex": value.get("hex")})), indent=2))
    for i, item in enumerate(full["inputs"], 1):
        out.print(f"input {i}/{len(full['inputs'])}: {item['topic']} key {item['key']}: "
                             f"{item['record'] or 'not decodable (' + str(item['error']) + ')'}", highlight=False)
        print(json.dumps(_abbreviate(item.get("decoded", {"hex": item.get("hex")})), indent=2))


@deadletter_app.command("replay")
@_friendly
def replay(ids: Optional[list[str]] = typer.Argument(None, help="Only these dead letters (PARTITION:OFFSET); default: all selected."),
           stage: Optional[str] = StageOpt, code: Optional[str] = CodeOpt, since: Optional[str] = SinceOpt,
           image: Optional[str] = ImageOpt,
           dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be replayed; produce nothing."),
           wait: bool = typer.Option(False, "--wait", help="Block until every replayed image is analyzed again."),
           timeout: float = typer.Option(600.0, help="--wait: give up after this many seconds (exit 4)."),
           as_json: bool = JsonOpt) -> None:
    """Re-run each selected image from its upload, as a new run (one per image: its newest dead letter).

    The run id is <original run>~replay-<partition>-<offset>: replaying a dead letter twice is one run."""
    from lensflow.streams.uploads import AnalyzedWatch, NotDelivered, Publisher

    s = settings()
    flt = _filter(stage, code, since, image, ids)
    publisher = Publisher.for_settings(s)
    codec = publisher.codec
    letters = sorted(flt.select(read_letters(s, codec, flt.since, progress=progress(as_json))), key=_chronological)
    if flt.ids:
        missing = sorted(flt.ids - {x.id for x in letters})
        if missing:
            raise CliError(f"no such dead letter(s) among those selected: {', '.join(missing)}")
    decisions = plan_replay(letters, codec)
    chosen = [d for d in decisions if d.replayed]
    watch = AnalyzedWatch(s, codec) if wait and chosen and not dry_run else None
    started = time.monotonic()
    if chosen and not dry_run:
        try:
            publisher.upload([d.upload for d in chosen])
        except NotDelivered as exc:
            if watch is not None:
                watch.close()
            raise CliError(f"replay: {exc}") from None
    done = "would replay" if dry_run else "replayed"
    for d in decisions:
        dl = d.letter.record or {}
        code_ = (dl.get("error") or {}).get("code")
        obj = {"id": d.letter.id, "image_id": d.image_id, "stage": dl.get("stage"), "code": code_,
               "status": done.replace(" ", "_") if d.replayed else "skipped",
               "run_id": d.upload["run_id"] if d.replayed else None, "reason": d.reason}
        if d.replayed:
            line = f"{done:<12} {d.letter.id:<8} {d.image_id}  run {d.upload['run_id']}  ({dl.get('stage')} {code_}; {d.reason})"
        else:
            line = f"{'skipped':<12} {d.letter.id:<8} {d.image_id or '-'}  {d.reason}"
        emit(as_json, obj, line)
    skipped = len(decisions) - len(chosen)
    err.print(f"lensflow: {len(chosen)} image(s) {'would be replayed' if dry_run else 'replayed'}" + (f", {skipped} dead letter(s) skipped" if skipped else "")
                  + ("" if decisions else " (no dead letter matches)"), highlight=False)
    if watch is None:
        return
    uploads = [{"image_id": d.upload["image_id"], "run_id": d.upload["run_id"], "name": d.letter.id} for d in chosen]
    results = await_analyzed(watch, uploads, timeout, started, as_json)
    for u in uploads:
        r = results.get(u["image_id"])
        status = r["status"] if r else "timeout"
        emit(as_json, {"image_id": u["image_id"], "run_id": u["run_id"], "id": u["name"], "status": status,
                            "error": r.get("error") if r else None},
                  f"{u['image_id']}  {status}  run {u['run_id']}")
    if len(results) < len(uploads):
        raise CliError(f"{len(uploads) - len(results)} replayed image(s) not analyzed within {timeout:.0f}s "
                           "(is a worker running? `lensflow worker`)", 4)
    if any(r["status"] == "failed" for r in results.values()):
        raise typer.Exit(1)
