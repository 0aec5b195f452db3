"""`lensflow topology`, `schemas` and `config`: what the dataflow, its records and its settings are."""

from __future__ import annotations

import json

import typer

from lensflow.streams.settings import Settings

from .app import app
from .core import Table, err, friendly, out, settings


@app.command()
@friendly
def topology(as_json: bool = typer.Option(False, "--json", help="Print JSON (what the Helm chart is checked against).")) -> None:
    """The dataflow: every topic, every stage (what it reads and writes) and the stage groups of a split
    deployment with their consumer groups."""
    from lensflow.streams.topology import describe_topology

    info = describe_topology(settings().app_id)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table("stage", "kind", "reads", "writes")
    for name, st in info["stages"].items():
        table.add_row(name, st["kind"], ", ".join(st["reads"]), ", ".join(st["writes"]))
    out.print(table)
    groups = Table("group", "stages", "consumer group", "reads", "needs Qdrant")
    for name, g in info["groups"].items():
        groups.add_row(name, ", ".join(g["stages"]), g["consumer_group"], ", ".join(g["reads"]), "yes" if g["needs_qdrant"] else "")
    out.print(groups)


@app.command()
@friendly
def schemas(check: bool = typer.Option(False, "--check", help="Fail when a schema changed without being frozen, or broke compatibility."),
            freeze: bool = typer.Option(False, "--freeze", help="Record changed schemas as new versions (after checking them)."),
            generate: bool = typer.Option(False, "--generate", help="Write the Python type of every record "
                                                                    "(streams/avro_types.py) from the schemas."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON (the list, or the findings of --check).")) -> None:
    """List the Avro records and their topics; check or freeze schema evolution; generate the records' types."""
    from lensflow.streams import evolution, recordgen
    from lensflow.streams.codec import default_schemas
    from lensflow.streams.topology import TOPICS

    if generate:
        changed = recordgen.write()
        err.print(f"lensflow: {'wrote' if changed else 'unchanged:'} {recordgen.MODULE}", highlight=False)
        return
    if freeze:
        for path in evolution.freeze():
            err.print(f"lensflow: froze {path}")
        return
    if check:
        findings = evolution.check()
        if recordgen.stale():
            findings.append(evolution.Finding(str(recordgen.MODULE.name), "out of date with the schemas: run "
                                                                          "`lensflow schemas --generate`"))
        if as_json:
            print(json.dumps([{"record": f.record, "problem": f.problem} for f in findings], indent=2))
        for f in findings:
            err.print(f"lensflow: {f}", highlight=False)
        if findings:
            raise typer.Exit(1)
        err.print(f"lensflow: {len(evolution.TOPIC_RECORDS)} records, all frozen; every version reads every other (Avro SchemaCompatibility, both ways)")
        return
    sset = default_schemas()
    rows = [{"topic": spec.name, "record": f"lensflow.v1.{spec.record}",
             "versions": len(sset.history.get(f"lensflow.v1.{spec.record}", [])),
             "fingerprint": sset.current[f"lensflow.v1.{spec.record}"].fingerprint.hex()} for spec in TOPICS.values()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("topic", "record", "versions", "fingerprint (CRC-64-AVRO)")
    for r in rows:
        table.add_row(r["topic"], r["record"], str(r["versions"]), r["fingerprint"])
    out.print(table)


@app.command()
@friendly
def config(as_json: bool = typer.Option(False, "--json"),
           markdown: bool = typer.Option(False, "--markdown", help="Print the defaults as the README's table.")) -> None:
    """The effective settings (environment, .env and defaults). Secrets show as "***" (null when unset)."""
    import typing

    from pydantic import SecretStr

    def secret(annotation) -> bool:
        return annotation is SecretStr or any(secret(a) for a in typing.get_args(annotation))

    def masked(value):
        return None if value is None else "***"

    secrets = {name for name, field in Settings.model_fields.items() if secret(field.annotation)}
    if markdown:
        print("| variable | default | what it does |\n| --- | --- | --- |")
        for name, field in Settings.model_fields.items():
            default = field.default_factory() if field.default_factory else field.default
            if name in secrets:
                default = masked(default)
            print(f"| `LENSFLOW_{name.upper()}` | `{json.dumps(default, default=str)}` | {field.description} |")
        return
    s = settings()
    values = json.loads(s.model_dump_json())
    for name in secrets:
        values[name] = masked(getattr(s, name))
    if as_json:
        print(json.dumps(values, indent=2))
        return
    table = Table("setting", "value", "description")
    for name, field in Settings.model_fields.items():
        table.add_row(f"LENSFLOW_{name.upper()}", json.dumps(values[name]), field.description or "")
    out.print(table)
