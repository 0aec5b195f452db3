"""The small shared core of the CLI: the two consoles, the one-line error, the settings, progress bars
and result lines. Every command module builds on it; it imports none of them."""

from __future__ import annotations

import functools
import json
import os
import sys

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable
from rich.text import Text

from lensflow.streams.settings import Settings, get_settings

# Nothing printed is read as Rich markup (markup=False): a message, a path, a caption or a setting's
# description with brackets in it is shown as it is ("[storage_url]" was printed as "" before).
# piped output (CI logs, `| less`) gets a wide table instead of rich's 80-column default
out = Console(markup=False) if sys.stdout.isatty() else Console(width=200, markup=False)
# one failure, one line: never wrap stderr at 80 columns when it is not a terminal
err = Console(stderr=True, markup=False) if sys.stderr.isatty() else Console(stderr=True, width=400, markup=False)


class CliError(Exception):
    """A failure the user can act on: printed as one line (never read as Rich markup), exit ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    """One progress or status line on stderr, printed as it is (no markup, no highlighting)."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def friendly(fn):
    """One line per failure, a non-zero exit, no traceback (LENSFLOW_DEBUG=1 shows it). Messages are
    printed literally: a setting's name in brackets or a user's text is never taken for markup."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except CliError as exc:
            err.print(f"lensflow: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.code) from None
        except KeyboardInterrupt:
            say("lensflow: interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("LENSFLOW_DEBUG"):
                raise
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err.print(f"lensflow: error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic ValidationError: name the setting
        raise CliError(f"invalid setting: {exc}".replace("\n", " ")) from None


class Table(RichTable):
    """A rich Table whose string cells are shown as they are: a setting's description with
    ``[storage_url]`` in it, a caption or a file name is never read as markup (Rich would drop it)."""

    def add_row(self, *cells, **kwargs):
        return super().add_row(*(Text(c) if isinstance(c, str) else c for c in cells), **kwargs)


def progress(quiet: bool) -> Progress:
    """A transient progress bar on stderr (off when ``quiet`` or stderr is not a terminal)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=quiet or not err.is_terminal)


def emit(as_json: bool, obj: dict, line: str) -> None:
    """One result: a JSON line, or ``line`` printed literally."""
    if as_json:
        print(json.dumps(obj, default=str))
    else:
        out.print(line, markup=False, highlight=False, soft_wrap=True)
