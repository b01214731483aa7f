"""`tokenfleet --help` and each command's `--help` load no numerical library (numpy,
scipy, polars, numba, ray, plotly, torch): they are what made `--help` take seconds.
A deterministic stand-in for "answers in < 0.5 s" (timing on a shared CI box is noise;
the newcomer check times it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tokenfleet.cli.app import COMMANDS, load_command

HEAVY = ("numpy", "scipy", "polars", "numba", "ray", "plotly", "torch", "pyarrow")
STILL_HEAVY: set[str] = set()  # commands allowed a numerical import for --help (none)

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
    line = next(x for x in out.stdout.splitlines() if x.startswith("HEAVY="))
    return json.loads(line.removeprefix("HEAVY="))


def test_top_level_help_imports_no_command_module() -> None:
    assert _heavy_modules([]) == []


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - STILL_HEAVY))
def test_command_help_imports_no_numerical_library(command: str) -> None:
    assert _heavy_modules([command]) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_listed_summary_is_the_commands_own(command: str) -> None:
    cmd = load_command(command)
    own = (cmd.short_help or (cmd.help or "").split("\n\n")[0]).replace("\n", " ").strip()
    assert COMMANDS[command][1] == own, command


def test_trace_formats_named_for_help_are_the_registered_ones() -> None:
    from tokenfleet.cli.trace import TRACE_FORMATS
    from tokenfleet.workload.readers import trace_formats

    assert set(TRACE_FORMATS) == set(trace_formats())
