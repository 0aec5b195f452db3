"""Typer commands called as plain functions inside the CLI (``demo`` calls ``worker``, ``submit``,
``stack_up``, ``models_prepare``) must pass every parameter: an omitted one is Typer's ``OptionInfo``
object, not its default (``make demo`` once failed with "expected str … not OptionInfo"). Also the
worker's process set-up: its malloc arena cap."""

import ast
import inspect

import typer

from lensflow.streams import cli
from tests.conftest import ROOT


def test_every_direct_call_of_a_command_passes_every_option():
    commands = {name: fn for name, fn in vars(cli).items()
                if callable(fn) and any(isinstance(p.default, (typer.models.OptionInfo, typer.models.ArgumentInfo))
                                        for p in inspect.signature(fn).parameters.values())}
    assert {"worker", "submit", "demo"} <= set(commands)
    tree = ast.parse((ROOT / "streams" / "cli.py").read_text())
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in commands:
            params = inspect.signature(commands[node.func.id]).parameters
            given = {k.arg for k in node.keywords} | set(list(params)[:len(node.args)])
            missing = [n for n, p in params.items()
                       if isinstance(p.default, (typer.models.OptionInfo, typer.models.ArgumentInfo)) and n not in given]
            assert not missing, f"streams/cli.py:{node.lineno}: {node.func.id}() called without {missing}"
            checked += 1
    assert checked >= 3


def test_malloc_arenas_are_capped_on_glibc_unless_told_otherwise(monkeypatch):
    import platform

    from lensflow.streams.cli import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas(0) is False
    assert limit_malloc_arenas(2) is (platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the operator's own setting wins
    assert limit_malloc_arenas(2) is False
