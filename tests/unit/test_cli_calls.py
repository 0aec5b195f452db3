"""Typer commands called as plain functions inside the CLI (``demo`` calls ``worker``, ``submit``,
``stack_up``, ``models_prepare``) must pass every parameter: an omitted one is Typer's ``OptionInfo``
object, not its default (``make demo`` once failed with "expected str … not OptionInfo"). Also the
worker's process set-up: its malloc arena cap."""

import ast
import inspect

import typer

from lensflow import cli
from tests.conftest import ROOT


def test_every_direct_call_of_a_command_passes_every_option():
    commands = {name: fn for module in cli.COMMANDS for name, fn in vars(module).items()
                if inspect.isfunction(fn) and any(isinstance(p.default, (typer.models.OptionInfo, typer.models.ArgumentInfo))
                                        for p in inspect.signature(fn).parameters.values())}
    assert {"worker", "submit", "demo"} <= set(commands)
    checked = 0
    for path in sorted((ROOT / "cli").glob("*.py")):
        checked += _check_calls(path, commands)
    assert checked >= 3


def _check_calls(path, commands) -> int:
    tree = ast.parse(path.read_text())
    checked = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in commands:
            params = inspect.signature(commands[node.func.id]).parameters
            given = {k.arg for k in node.keywords} | set(list(params)[:len(node.args)])
            missing = [n for n, p in params.items()
                       if isinstance(p.default, (typer.models.OptionInfo, typer.models.ArgumentInfo)) and n not in given]
            assert not missing, f"cli/{path.name}:{node.lineno}: {node.func.id}() called without {missing}"
            checked += 1
    return checked


def test_malloc_arenas_are_capped_on_glibc_unless_told_otherwise(monkeypatch):
    import platform

    from lensflow.cli.supervise import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas(0) is False
    assert limit_malloc_arenas(2) is (platform.libc_ver()[0] == "glibc")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the operator's own setting wins
    assert limit_malloc_arenas(2) is False


def test_nothing_printed_is_read_as_markup():
    """`lensflow config` printed "Default: ." for a description holding "[storage_url]": Rich read it as
    markup. Tables, result lines and errors are printed literally."""
    from typer.testing import CliRunner

    from lensflow.streams.settings import Settings

    described = [f.description for f in Settings.model_fields.values() if "[" in (f.description or "")]
    assert any("[storage_url]" in d for d in described)
    result = CliRunner().invoke(cli.app, ["config"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "[storage_url]" in result.output
    failed = CliRunner().invoke(cli.app, ["submit", "/no/such/[file].jpg", "--user", "alice"])
    assert failed.exit_code == 2 and "[file].jpg" in failed.output


def test_dash_h_is_help():
    from typer.testing import CliRunner

    for args in (["-h"], ["submit", "-h"], ["faces", "enroll", "-h"]):
        result = CliRunner().invoke(cli.app, args)
        assert result.exit_code == 0 and "Usage" in result.output, (args, result.output[-300:])
