"""The root command and its groups; the command modules register on them (``cli/__init__.py`` imports
every one)."""

from __future__ import annotations

import typer

HELP = "lensflow: streaming image analysis on Kafka (Faust agents, Avro topics, Cassandra + Qdrant)."
CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, help=HELP, context_settings=CONTEXT)
stack_app = typer.Typer(no_args_is_help=True, help="The local Kafka + Cassandra stack (jars from Maven Central).",
                        context_settings=CONTEXT)
models_app = typer.Typer(no_args_is_help=True, help="Model files: built once from registry packages, verified by SHA-256.",
                         context_settings=CONTEXT)
faces_app = typer.Typer(no_args_is_help=True, help="A user's face gallery: enroll named people, name clustered ones.",
                        context_settings=CONTEXT)
token_app = typer.Typer(no_args_is_help=True, help="Bearer tokens for the read service.", context_settings=CONTEXT)
deadletter_app = typer.Typer(no_args_is_help=True, help="Dead letters (images.deadletter): list, show, replay as new runs.",
                             context_settings=CONTEXT)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"lensflow {version('lensflow')}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """lensflow: streaming image analysis on Kafka (Faust agents, Avro topics, Cassandra + Qdrant)."""


app.add_typer(stack_app, name="stack")
app.add_typer(models_app, name="models")
app.add_typer(faces_app, name="faces")
app.add_typer(token_app, name="token")
app.add_typer(deadletter_app, name="deadletter")
