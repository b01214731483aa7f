"""`tokenfleet --help` and every command's and subcommand's `--help` load none of the
libraries that made `--help` take seconds (numpy, scipy, polars, numba, highspy, ray,
plotly, torch, pyarrow) nor pydantic (~0.1 s: Typer builds a pydantic adapter for an
absent flag, see `cli.app._HelpFlag`). A deterministic stand-in for "answers in < 0.5 s"
(timing on a shared CI box is noise; the newcomer check times it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.core import TyperGroup

from tokenfleet.cli.app import COMMANDS, load_command

try:  # the click copy Typer's classes derive from (see cli/app.py)
    from typer import _click as click
except ImportError:  # pragma: no cover
    import click  # type: ignore[no-redef]

HEAVY = ("numpy", "scipy", "polars", "numba", "highspy", "ray", "plotly", "torch", "pyarrow",
         "pydantic")

_PROBE = """
import json, sys
from tokenfleet.cli.app import app
try:
    app(args=sys.argv[1:] + ["--help"], standalone_mode=False)
except SystemExit:
    pass
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(%r)))
print("HEAVY=" + json.dumps(heavy))
"""


def _heavy_modules(args: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE % json.dumps(HEAVY), *args],
                         capture_output=True, text=True, env={**os.environ}, timeout=120)
    line = next((x for x in out.stdout.splitlines() if x.startswith("HEAVY=")), None)
    assert line is not None, out.stderr[-2000:]
    return json.loads(line.removeprefix("HEAVY="))


def _command_paths() -> list[list[str]]:
    """Every command, and every subcommand of a command group (``catalog list``, ...)."""
    paths: list[list[str]] = []

    def walk(path: list[str], cmd: click.Command) -> None:
        paths.append(path)
        if isinstance(cmd, TyperGroup):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None:
                    walk([*path, name], sub)

    for name in COMMANDS:
        walk([name], load_command(name))
    return paths


def test_top_level_help_imports_no_command_module() -> None:
    assert _heavy_modules([]) == []


def test_subcommands_of_groups_are_covered() -> None:
    # the walk below must reach nested commands, or the next test checks too little
    assert ["catalog", "list"] in _command_paths() and ["trace", "stats"] in _command_paths()


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_command_help_imports_no_heavy_library(path: list[str]) -> None:
    assert _heavy_modules(path) == []


def test_absent_help_flag_reads_as_no_help(capsys: pytest.CaptureFixture[str]) -> None:
    # the flag that skips pydantic when absent still shows help when given, and only then
    import typer

    from tokenfleet.cli.app import _HelpFlag, app

    group = typer.main.get_group(app)
    ctx = click.Context(group)
    flag = group.get_help_option(ctx)
    assert isinstance(flag, _HelpFlag)
    flag.process_value(ctx, None)
    assert capsys.readouterr().out == ""
    with pytest.raises(typer.Exit):
        flag.process_value(ctx, True)
    assert "Usage:" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_listed_summary_is_the_commands_own(command: str) -> None:
    cmd = load_command(command)
    own = (cmd.short_help or (cmd.help or "").split("\n\n")[0]).replace("\n", " ").strip()
    assert COMMANDS[command][1] == own, command


def test_trace_formats_named_for_help_are_the_registered_ones() -> None:
    from tokenfleet.cli.trace import TRACE_FORMATS
    from tokenfleet.workload.readers import trace_formats

    assert set(TRACE_FORMATS) == set(trace_formats())
