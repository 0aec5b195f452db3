"""`lensflow search`, `open` and `faces …`: through the read service, as the user of the token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


from .app import app, faces_app
from .core import CliError, Table, emit, err, friendly, out, settings
from .client import api_call, api_url


@app.command()
@friendly
def search(user: Optional[str] = typer.Option(None, "--user", "-u", help="Whose images (never anyone else's); "
                                              "default: the user of LENSFLOW_API_TOKEN."),
           text: Optional[str] = typer.Option(None, "--text", help="Describe what you look for."),
           like: Optional[str] = typer.Option(None, "--like", help="An image id: find similar images."),
           tag: Optional[str] = typer.Option(None, "--tag", help="A tag (object, place, event, camera, year …)."),
           person: Optional[str] = typer.Option(None, "--person", help="A person's name."),
           taken_after: Optional[str] = typer.Option(None, "--taken-after", help="ISO date, e.g. 2020-01-01."),
           near: Optional[str] = typer.Option(None, "--near", help="LAT,LON,KM"),
           limit: int = typer.Option(10, "--limit"),
           cursor: Optional[str] = typer.Option(None, "--cursor", help="The next_cursor of an earlier page (with --json)."),
           safe: bool = typer.Option(False, "--safe", help="Only images the safety stage scored below "
                                     "LENSFLOW_SAFETY_THRESHOLD (unscored images are left out too)."),
           as_json: bool = typer.Option(False, "--json", help="Print the hits as a JSON list (the next page's cursor on stderr).")) -> None:
    """Find a user's images by text, by example, by tag or by person (through the read service)."""
    s = settings()
    params = {k: v for k, v in {"text": text, "like": like, "tag": tag, "person": person,
                                "taken_after": taken_after, "near": near, "limit": str(limit), "cursor": cursor,
                                "safe": "true" if safe else None}.items() if v}
    if sum(1 for k in ("text", "like", "tag", "person") if k in params) != 1:
        raise CliError("give exactly one of --text, --like, --tag, --person")
    answer = api_call(s, "GET", "/v1/search", user, params=params)
    results = answer["results"]
    if as_json:
        print(json.dumps(results, indent=2, default=str))
        if answer.get("next_cursor"):
            err.print(f"lensflow: more: --cursor {answer['next_cursor']}", highlight=False)
        return
    table = Table("image", "score", "taken", "caption")
    for r in results:
        table.add_row(r["image_id"], f"{r['score']:.3f}", str(r.get("taken_at") or ""), r.get("caption") or "")
    out.print(table)
    if answer.get("next_cursor"):
        err.print(f"lensflow: more: --cursor {answer['next_cursor']}", highlight=False)


@app.command("open")
@friendly
def open_(image_id: str = typer.Argument(..., help="Image id (as printed by submit)."),
          user: Optional[str] = typer.Option(None, "--user", "-u", help="Whose image (checked through the read service)."),
          ) -> None:
    """Print the image's page in the gallery (after checking, as the user, that it is there)."""
    s = settings()
    api_call(s, "GET", f"/v1/images/{image_id}", user)
    out.print(f"{api_url(s)}/#/image/{image_id}", highlight=False, soft_wrap=True)




@faces_app.command("enroll")
@friendly
def faces_enroll(photos: list[Path] = typer.Argument(..., help="Photos of the person (the largest face is used)."),
                 user: Optional[str] = typer.Option(None, "--user", "-u"), name: str = typer.Option(..., "--name"),
                 as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Add named reference faces for a user; later photos of that person are tagged with the name."""
    s = settings()
    for p in photos:
        if not p.is_file():
            raise CliError(f"{p}: no such file")
    # one request per photo: each request carries one photo of up to LENSFLOW_MAX_BYTES
    faces, person = 0, None
    for p in photos:
        try:
            r = api_call(s, "POST", "/v1/faces/enroll", user, data={"name": name},
                          files=[("photos", (p.name, p.read_bytes(), "application/octet-stream"))])
        except CliError as exc:
            raise CliError(f"{p}: {exc}", exc.code) from None
        faces, person = faces + r["faces"], r["person_id"]
    emit(as_json, {"person_id": person, "faces": faces, "name": name},
          f"enrolled {faces} face(s) of {name!r} (person {person})")


@faces_app.command("name")
@friendly
def faces_name(person_id: str = typer.Argument(..., help="A person id (as shown in `show --json` faces)."),
               name: str = typer.Argument(...), user: Optional[str] = typer.Option(None, "--user", "-u"),
               as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Name a clustered person; earlier matches are kept."""
    s = settings()
    r = api_call(s, "PUT", f"/v1/people/{person_id}/name", user, json={"name": name})
    emit(as_json, r, f"{r['faces']} face(s) of person {person_id} are now {name!r}")


@faces_app.command("people")
@friendly
def faces_people(user: Optional[str] = typer.Option(None, "--user", "-u"),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON lines.")) -> None:
    """A user's people, named and clustered (every page)."""
    s = settings()
    cursor = None
    rows = []
    while True:
        r = api_call(s, "GET", "/v1/people", user, params={"limit": "200", **({"cursor": cursor} if cursor else {})})
        rows += r["people"]
        cursor = r.get("next_cursor")
        if not cursor:
            break
    if as_json:
        for p in rows:
            print(json.dumps(p))
        return
    table = Table("person", "name", "faces", "images")
    for p in rows:
        table.add_row(p["person_id"], p.get("name") or "", str(p["faces"]), str(p["images"]))
    out.print(table)
