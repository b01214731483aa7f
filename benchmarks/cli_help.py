"""Wall time of `tokenfleet --help` and of every command's and subcommand's `--help`.

Each run is a fresh process (the console script next to this Python), so the figure is
what a user waits for: interpreter start, imports, rendering. Commands are interleaved
round by round so that a busy machine slows every command alike.

    python benchmarks/cli_help.py                      # this checkout's src (PYTHONPATH)
    python benchmarks/cli_help.py --src OTHER/src      # add another checkout, interleaved

Prints, per command and source tree, the median and the fastest wall time of ``--repeat``
runs and the median CPU time (user + system of the process; less sensitive than wall time
to other jobs on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command_paths() -> list[list[str]]:
    """[] (the top level), every command, and every subcommand of a command group."""
    probe = (
        "from typer.core import TyperGroup\n"
        "from tokenfleet.cli.app import COMMANDS, load_command\n"
        "try:\n    from typer import _click as click\n"
        "except ImportError:\n    import click\n"
        "for name in COMMANDS:\n"
        "    cmd = load_command(name); print(name)\n"
        "    if isinstance(cmd, TyperGroup):\n"
        "        ctx = click.Context(cmd)\n"
        "        for sub in cmd.list_commands(ctx): print(name, sub)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env=_env(ROOT / "src"))
    return [[]] + [line.split() for line in out.stdout.splitlines() if line.strip()]


def _env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src)}


def _launcher() -> list[str]:
    script = Path(sys.executable).parent / "tokenfleet"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tokenfleet.cli"]


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


Runs = dict[tuple[str, str], list[tuple[float, float]]]


def time_help(srcs: list[Path], paths: list[list[str]], repeat: int) -> Runs:
    """(wall s, CPU s) per (source tree, command), ``repeat`` runs each, interleaved."""
    runs: Runs = {}
    for _ in range(repeat):
        for path in paths:
            for src in srcs:
                cpu0_s, start_s = _children_cpu_s(), time.perf_counter()
                r = subprocess.run([*_launcher(), *path, "--help"], capture_output=True,
                                   env=_env(src))
                elapsed_s, cpu_s = time.perf_counter() - start_s, _children_cpu_s() - cpu0_s
                if r.returncode != 0:
                    sys.exit(f"{' '.join(path)} --help failed with {src}: {r.stderr[-300:]!r}")
                runs.setdefault((str(src), " ".join(path)), []).append((elapsed_s, cpu_s))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, action="append", default=[],
                    help="another checkout's src/ to time alongside this one (repeatable)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per command (default 5)")
    a = ap.parse_args()
    srcs = [*a.src, ROOT / "src"]
    runs = time_help(srcs, command_paths(), a.repeat)
    print(f"# tokenfleet [command] --help, wall s over {a.repeat} runs, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    for src in srcs:
        print(f"\n{src}")
        walls: list[float] = []
        for (tree, name), got in runs.items():
            if tree == str(src):
                wall_s, cpu_s = [w for w, _ in got], [c for _, c in got]
                walls.append(statistics.median(wall_s))
                label = f"tokenfleet {name} --help".replace("  ", " ")
                print(f"  {label:42s} wall median {walls[-1]:.3f}  min {min(wall_s):.3f}"
                      f"   CPU median {statistics.median(cpu_s):.3f}")
        print(f"  {'slowest wall median':42s} {max(walls):.3f}")


if __name__ == "__main__":
    main()
