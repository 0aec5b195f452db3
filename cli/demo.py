"""`lensflow demo`: what `make demo` runs."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Optional

import typer


from .app import app
from .core import CliError, Table, err, friendly, out, say, settings
from .client import api_url
from .show import fetch_image
from .stack import stack_up
from .submit import submit
from .worker import ensure_models, hosts_api, worker

#: The photos of a checkout, relative to where `make demo` runs.
CHECKOUT_PHOTOS = Path("samples/photos")


def sample_photos(photos: Path | None) -> Path:
    """``photos`` when given, else a checkout's samples/photos (the current folder's), else the few sample
    photos shipped inside the package (``lensflow.samples``), said in one line."""
    if photos is not None:
        return photos
    if CHECKOUT_PHOTOS.is_dir():
        return CHECKOUT_PHOTOS
    from lensflow.streams.stack import package_file

    shipped = package_file("lensflow.samples", "SOURCES.md").parent
    say(f"lensflow: no {CHECKOUT_PHOTOS} here: submitting the sample photos shipped with lensflow ({shipped})")
    return shipped


@app.command()
@friendly
def demo(
    photos: Optional[Path] = typer.Option(None, help="Folder of photos to submit [default: samples/photos when "
                                          "it is there (a checkout), else the sample photos shipped with lensflow]."),
    user: str = typer.Option("demo", help="User id for the demo images."),
    models: bool = typer.Option(True, "--models/--no-models", help="Run every available model stage (prepares the models first)."),
    keep_worker: bool = typer.Option(True, help="Leave the background worker running afterwards."),
) -> None:
    """Start the stack and a worker, submit the sample photos, print what was found."""
    from lensflow.builders.registry import models_for_stages

    from lensflow.streams.topology import AVAILABLE_STAGES

    s = settings()
    photos = sample_photos(photos)
    files = sorted(p for p in photos.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp", ".heic", ".avif"})
    if not files:
        raise CliError(f"no photos in {photos}")
    stages = list(AVAILABLE_STAGES) if models else ["metadata"]
    needed = models_for_stages(stages, s)
    if needed and s.prepare_models:  # one line (two more per model built now); the details go to a log
        t0 = time.monotonic()
        failed = ensure_models(s, stages, log=s.data_path / "logs" / "models.log")
        say(f"lensflow: models: {len(needed) - len(failed)} of {len(needed)} ready in {time.monotonic() - t0:.1f}s"
            + (f" ({', '.join(failed)} not available: their stages report model_unavailable)" if failed else ""))
    stack_up(as_json=False)
    worker(stages=None, background=True, stop=False, ready_timeout=240.0, group=None)
    err.print(f"lensflow: submitting {len(files)} photos as user {user!r} through stages {', '.join(stages)}")
    code = 0
    try:
        submit(paths=[str(p) for p in files], user=user, wait=True, as_json=False, stages=",".join(stages), timeout=600.0,
               via_api=False)
    except typer.Exit as exc:
        code = exc.exit_code
    from lensflow.agents.metadata import camera_name

    from lensflow.streams.records import image_id_for

    table = Table("file", "status", "taken", "camera", "gps", "tags", "caption")
    for p in files:
        image_id = image_id_for(user, hashlib.sha256(p.read_bytes()).hexdigest())
        row = fetch_image(s, image_id)
        if row is None:
            table.add_row(p.name, "missing", "", "", "", "", "")
            continue
        gps = f"{row['gps_lat']:.3f},{row['gps_lon']:.3f}" if row.get("gps_lat") is not None else ""
        camera = camera_name(row.get("camera_make"), row.get("camera_model")) or ""
        tags = ", ".join(t["tag"] if t["kind"] != "person" else f"person:{t['tag'][:8]}"
                         for t in row.get("tags", []) if t["kind"] not in ("camera", "year"))
        table.add_row(p.name, row["status"], str(row.get("taken_at_local") or "")[:10], camera, gps,
                      tags, row.get("caption") or "")
    out.print(table)
    out.print(f"show one: lensflow show {image_id_for(user, hashlib.sha256(files[0].read_bytes()).hexdigest())}")
    if not keep_worker:
        worker(stages=None, background=False, stop=True, ready_timeout=0, group=None)
    else:
        out.print(f"the worker keeps running (try `lensflow search --user {user} --text \"a cat\"`); "
                  "stop: `lensflow worker --stop`, then `lensflow stack down`")
        if hosts_api(s, {"cassandra", "qdrant"}):
            out.print(f"gallery: {api_url(s)}/  (development login as {s.api_dev_user}; or "
                      f"`lensflow token issue --user {user}`)", highlight=False, soft_wrap=True)
    if code not in (0, 1):
        raise typer.Exit(code)
