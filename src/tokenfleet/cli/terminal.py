"""Rich consoles for command output: the terminal's width when there is one, and a
wide fixed width when output goes to a file or pipe (tables stay readable in logs)."""

from __future__ import annotations

from rich.console import Console

PIPE_WIDTH = 160


def console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH)
