"""`lensflow show`: one stored analysis from Cassandra, as a table, JSON or the boxes drawn."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

import typer

from lensflow.streams.settings import Settings

from .app import app
from .core import CliError, Table, err, friendly, out, settings


def cassandra_store(s: Settings):
    """The store layer on the configured Cassandra, for one CLI command (close it when done)."""
    from lensflow.streams.store import CassandraStore

    from lensflow.streams.security import cassandra_options

    return CassandraStore(s.cassandra_hosts, s.cassandra_port, s.cassandra_keyspace, **cassandra_options(s))


def fetch_image(s: Settings, image_id: str) -> dict | None:
    """The stored image row, its tags and the stages of its latest analysis run (from Cassandra)."""
    store = cassandra_store(s)
    try:
        return store.image(image_id)
    finally:
        store.close()


@app.command()
@friendly
def show(image_id: str = typer.Argument(..., help="Image id (as printed by submit)."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON: the image row, tags, stages, the analysis "
                                      "sections and the stored aggregate (vectors replaced by their length)."),
         render_to: Optional[Path] = typer.Option(None, "--render", metavar="OUT.jpg",
                                                  help="Also draw the object, face and text boxes, labelled, on the image "
                                                  "and write it here (JPEG or PNG by extension).")) -> None:
    """The stored analysis of one image, from Cassandra: caption, objects, faces, text, scene, safety,
    metadata and every stage's outcome."""
    from lensflow.streams.view import document_of

    s = settings()
    image = fetch_image(s, image_id)
    if image is None:
        raise CliError(f"image {image_id} not found in Cassandra keyspace {s.cassandra_keyspace}")
    image = document_of(image)
    if render_to is not None:
        _render(s, image, render_to)
    if as_json:
        print(json.dumps(image, default=str, indent=2, sort_keys=True))
        return
    _print_image(image_id, image)
    if render_to is not None:
        err.print(f"lensflow: drew {render_to}", highlight=False)


def _render(s: Settings, image: dict, dest: Path) -> None:
    """Draw the analysis on the stored derivative (the oriented, normalised copy the stages read)."""
    from PIL import Image

    from lensflow.streams.storage import Storage
    from lensflow.streams.view import render

    if image.get("analysis") is None:
        raise CliError(f"image {image['image_id']} has no stored analysis to draw")
    if dest.suffix.lower() not in (".jpg", ".jpeg", ".png"):
        raise CliError(f"--render writes .jpg or .png, not {dest.name!r}")
    uri = image.get("uri")
    if not uri:
        raise CliError(f"image {image['image_id']} has no stored derivative to draw on (status {image.get('status')})")
    storage = Storage(s.roots, allow_private_redirects=s.storage_allow_private_redirects, per_user=s.per_user_storage)
    try:
        picture = Image.open(io.BytesIO(storage.read(uri, s.max_bytes)))
        picture.load()
    except Exception as exc:  # noqa: BLE001  (one line for the user)
        raise CliError(f"cannot read the stored derivative {uri}: {exc}") from None
    drawn = render(picture, image["analysis"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    drawn.save(dest, quality=90) if dest.suffix.lower() != ".png" else drawn.save(dest)


def _print_image(image_id: str, image: dict) -> None:
    table = Table(title=f"image {image_id}", show_header=False)
    a = image.get("analysis") or {}
    if a.get("caption"):
        table.add_row("caption", a["caption"])
    for key in ["status", "error_code", "error_message", "user_id", "source_uri", "uri", "format", "size_bytes",
                "original_width", "original_height", "width", "height", "orientation", "taken_at", "taken_at_local",
                "tz_offset", "camera_make", "camera_model", "lens_model", "exposure_time_s", "f_number", "iso",
                "focal_length_mm", "gps_lat", "gps_lon", "gps_alt_m", "analysis_version", "last_analyzed"]:
        if image.get(key) is not None:
            table.add_row(key, str(image[key]))
    place = ((a.get("metadata") or {}).get("place") or {})
    if place:
        table.add_row("place", ", ".join(str(place[k]) for k in ("city", "region", "country") if place.get(k)))
    def box(b: dict | None) -> str:
        return f"({b['x1']:.0f},{b['y1']:.0f})-({b['x2']:.0f},{b['y2']:.0f})" if b else "-"
    for o in a.get("objects") or []:
        table.add_row("object", f"{o['label']} {o['confidence']:.2f} {box(o['box'])}")
    for f in a.get("faces") or []:
        who = f.get("person_name") or f"unnamed person {(f.get('person_id') or '?')[:8]}"
        table.add_row("face", f"{who} {f['confidence']:.2f} {box(f['box'])}")
    text = a.get("text")
    if text and text.get("lines"):
        table.add_row("text language", str(text.get("language") or "-"))
        for ln in text["lines"]:
            table.add_row("text", f"{ln['text']}  [{ln['confidence']:.2f} {box(ln['box'])}]")
    scene = a.get("scene")
    if scene:
        if scene.get("environment"):
            table.add_row("environment", f"{scene['environment']['label']} {scene['environment']['score']:.2f}")
        for key in ("places", "events", "classes"):
            if scene.get(key):
                table.add_row(key, ", ".join(f"{x['label']} {x['score']:.2f}" for x in scene[key]))
    if a.get("safety"):
        table.add_row("safety", f"nsfw {a['safety']['nsfw_score']:.2f}" + (" (unsafe)" if a["safety"]["unsafe"] else ""))
    if image.get("tags"):
        table.add_row("tags", ", ".join(f"{t['kind']}:{t['tag']}" for t in image["tags"]))
    for stage, info in (image.get("stages") or {}).items():
        table.add_row(f"stage {stage}", f"{info['status']} {info['ms']} ms" + (f" — {info['error']}" if info["error"] else ""))
    out.print(table)
