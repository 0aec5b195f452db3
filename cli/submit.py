"""`lensflow submit` and `lensflow reanalyze`: produce, then (with --wait) wait for images.analyzed."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Optional

import typer

from lensflow.streams.records import check_user_id
from lensflow.streams.settings import Settings

from .app import app
from .core import CliError, emit, err, friendly, progress, settings
from .client import api_call
from .events import await_analyzed
from .show import cassandra_store


def _uploads(s: Settings, user: str, items: list[str]) -> list[dict]:

    from lensflow.streams.errors import StageFailure
    from lensflow.streams.uploads import storage_for, store_upload

    try:
        check_user_id(user)  # it names the user's storage folder: checked before anything is written
    except StageFailure as exc:
        raise CliError(exc.message) from None  # rich markup: the id is the user's text
    storage = storage_for(s)
    uploads = []
    for item in items:
        if "://" in item:
            image_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{user}/{item}"))
            uploads.append({"image_id": image_id, "uri": item, "name": item, "size": None})
            continue
        path = Path(item).expanduser()
        if not path.is_file():
            raise CliError(f"{item}: no such file")
        data = path.read_bytes()
        try:
            image_id, uri = store_upload(s, storage, user, data, path.suffix)
        except StageFailure as exc:
            raise CliError(exc.message) from None
        uploads.append({"image_id": image_id, "uri": uri, "name": str(path), "size": len(data)})
    return uploads


@app.command()
@friendly
def submit(
    paths: list[str] = typer.Argument(..., help="Local files (copied into storage) or URIs under a storage root."),
    user: str = typer.Option(..., "--user", "-u", help="Owner of the images."),
    wait: bool = typer.Option(False, "--wait", help="Block until every image is analyzed; one line per image."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON lines."),
    stages: Optional[str] = typer.Option(None, help="Comma-separated stages for these images (default: configured)."),
    timeout: float = typer.Option(300.0, help="--wait: give up after this many seconds (exit 4)."),
    via_api: bool = typer.Option(False, "--via-api", help="Upload each file over HTTP to the read service "
                                 "(POST /v1/images) instead of producing to Kafka directly."),
) -> None:
    """Upload images: produce one ImageUploaded event per image (idempotent producer), or with --via-api
    post them to the read service, which does the same."""

    from lensflow.streams.errors import StageFailure
    from lensflow.streams.topology import plan_for
    from lensflow.streams.uploads import AnalyzedWatch, NotDelivered, Publisher, new_run_id, upload_record

    try:
        check_user_id(user)
    except StageFailure as exc:
        raise CliError(exc.message) from None  # rich markup: the id is the user's text
    s = settings()
    stage_list = [x.strip() for x in stages.split(",")] if stages else None
    if stage_list is not None:
        try:
            plan_for(stage_list, s.stages)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if via_api:
        if stage_list is not None:
            raise CliError("--stages cannot be chosen with --via-api (the read service runs the configured stages)")
        _submit_via_api(s, user, paths, wait, as_json, timeout)
        return
    publisher = Publisher.for_settings(s)
    uploads = _uploads(s, user, paths)
    watch = AnalyzedWatch(s, publisher.codec) if wait else None
    batch = str(uuid.uuid4())
    records = []
    for u in uploads:
        u["run_id"] = new_run_id(u["image_id"], batch)
        records.append(upload_record(user, u["image_id"], u["uri"], u["size"], u["run_id"], stage_list, "lensflow-cli",
                                     {"file": Path(u["name"]).name}))
    started = time.monotonic()
    with progress(as_json) as bar:
        task = bar.add_task("submitting", total=len(uploads))
        try:
            publisher.upload(records, advance=lambda: bar.advance(task))
        except NotDelivered as exc:
            raise CliError(str(exc)) from None
    if not wait:
        for u in uploads:
            emit(as_json, {"image_id": u["image_id"], "run_id": u["run_id"], "file": u["name"], "status": "submitted"},
                  f"{u['image_id']}  submitted  {u['name']}")
        return
    _report(uploads, await_analyzed(watch, uploads, timeout, started, as_json), as_json, timeout)


def _report(uploads: list[dict], results: dict[str, dict], as_json: bool, timeout: float) -> None:
    """One line (or JSON line) per upload of ``submit --wait``, however it was uploaded; exit 4 when one
    was not analyzed in time, 1 when one failed."""
    for u in uploads:
        r = results.get(u["image_id"])
        if r is None:
            emit(as_json, {"image_id": u["image_id"], "file": u["name"], "status": "timeout"},
                  f"{u['image_id']}  timeout   {u['name']}")
            continue
        line = f"{u['image_id']}  {r['status']:<8}  {r['seconds']:6.2f}s  {u['name']}"
        if r.get("error"):
            line += f"  ({r['error']['code']}: {r['error']['message']})"
        emit(as_json, {"image_id": u["image_id"], "run_id": u["run_id"], "file": u["name"], "status": r["status"], "seconds": round(r["seconds"], 3),
                        "analysis_version": r["analysis_version"], "error": r.get("error")}, line)
    if len(results) < len(uploads):
        raise CliError(f"{len(uploads) - len(results)} image(s) not analyzed within {timeout:.0f}s (is a worker running? `lensflow worker`)", 4)
    if any(r["status"] == "failed" for r in results.values()):
        raise typer.Exit(1)


def _submit_via_api(s: Settings, user: str, paths: list[str], wait: bool, as_json: bool, timeout: float) -> None:
    """``submit --via-api``: POST each file to /v1/images; with ``wait``, each analysis from Kafka."""
    from lensflow.streams.codec import Codec
    from lensflow.streams.uploads import AnalyzedWatch

    files = []
    for item in paths:
        path = Path(item).expanduser()
        if "://" in item or not path.is_file():
            raise CliError(f"{item}: no such file (--via-api uploads local files)")
        files.append(path)
    watch = AnalyzedWatch(s, Codec.for_settings(s)) if wait else None
    uploads = []
    started = time.monotonic()
    try:
        with progress(as_json) as bar:
            task = bar.add_task("uploading", total=len(files))
            for path in files:
                r = api_call(s, "POST", "/v1/images", user, content=path.read_bytes(),
                              headers={"Content-Type": "application/octet-stream"})
                uploads.append({"image_id": r["image_id"], "run_id": r["run_id"], "name": str(path)})
                bar.advance(task)
    except BaseException:
        if watch is not None:
            watch.close()
        raise
    if watch is None:
        for u in uploads:
            emit(as_json, {**u, "file": u["name"], "status": "submitted"}, f"{u['image_id']}  submitted  {u['name']}")
        return
    _report(uploads, await_analyzed(watch, uploads, timeout, started, as_json), as_json, timeout)


@app.command()
@friendly
def reanalyze(stage: str = typer.Option(..., "--stage", help="The analysis stage to run again (a pixel stage)."),
              user: Optional[str] = typer.Option(None, "--user", "-u", help="Only this user's images."),
              older_than_version: Optional[int] = typer.Option(None, "--older-than-version",
                                                               help="Only images whose analysis_version is below this."),
              wait: bool = typer.Option(False, "--wait", help="Block until every image is stored again."),
              timeout: float = typer.Option(600.0, help="--wait: give up after this many seconds (exit 4)."),
              as_json: bool = typer.Option(False, "--json", help="One JSON line per image (sent, or its outcome with --wait).")) -> None:
    """Run one stage again on stored images; the join merges the new result into each stored aggregate
    (other stages untouched), bumps analysis_version and last_analyzed, and emits the invalidation."""
    from lensflow.streams.topology import PREPARED
    from lensflow.streams.uploads import AnalyzedWatch, NotDelivered, Publisher, reanalysable_stages, reanalysis

    s = settings()
    if stage not in reanalysable_stages():
        raise CliError(f"--stage must be one of {reanalysable_stages()} (metadata and describe follow a re-submission)")
    publisher = Publisher.for_settings(s)
    codec = publisher.codec
    store = cassandra_store(s)
    try:
        rows = [r for r in store.images_of(user)
                if older_than_version is None or (r.analysis_version or 0) < older_than_version]
        watch = AnalyzedWatch(s, codec) if wait else None
        requests: list[tuple[str, dict]] = []
        batch = f"reanalyze-{uuid.uuid4().hex[:12]}"
        uploads, skipped = [], 0
        with progress(False) as bar:
            task = bar.add_task(f"re-running {stage}", total=len(rows))
            for r in rows:
                prepared, _ = reanalysis(codec, store, r.image_id, r.run_id, stage, batch)
                bar.advance(task)
                if prepared is None:
                    skipped += 1
                    continue
                requests.append((r.image_id, prepared))
                uploads.append({"image_id": r.image_id, "run_id": prepared["run_id"], "name": r.image_id})
        try:
            publisher.send(PREPARED, "ImagePrepared", requests)
        except NotDelivered as exc:
            if watch is not None:
                watch.close()
            raise CliError(f"re-analysis requests: {exc}") from None
    finally:
        store.close()
    err.print(f"lensflow: {len(uploads)} image(s) sent to {stage}" + (f", {skipped} skipped (failed or no stored run)" if skipped else ""))
    if not wait or not uploads:
        if watch is not None:
            watch.close()
        for u in uploads if as_json else []:
            emit(True, {"image_id": u["image_id"], "run_id": u["run_id"], "status": "sent"}, "")
        return
    results = await_analyzed(watch, uploads, timeout, time.monotonic(), as_json)
    for u in uploads:
        r = results.get(u["image_id"])
        emit(as_json, {"image_id": u["image_id"], "run_id": u["run_id"], "status": r["status"] if r else "timeout",
                        "analysis_version": r["analysis_version"] if r else None},
              f"{u['image_id']}  {r['status'] if r else 'timeout'}" + (f"  version {r['analysis_version']}" if r else ""))
    if len(results) < len(uploads):
        raise CliError(f"{len(uploads) - len(results)} image(s) not stored again within {timeout:.0f}s", 4)
