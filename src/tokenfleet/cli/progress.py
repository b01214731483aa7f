"""Progress on stderr: a Rich bar on a terminal, and elsewhere (CI logs, pipes, files)
one plain line every ``interval_s`` seconds and one at the end, so a long sweep is never
silent in a log and stdout stays free for ``--json``."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

LOG_INTERVAL_S = 10.0


class Tick(Protocol):
    def __call__(self, done: int, total: int | None = None, label: str | None = None) -> None:
        ...


class LineProgress:
    """Periodic ``label: done/total (pct), elapsed`` lines on a stream."""

    def __init__(self, label: str, total: int | None, stream: TextIO,
                 interval_s: float = LOG_INTERVAL_S, clock=time.monotonic) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.interval_s, self.clock = interval_s, clock
        self.start = self.last = clock()
        self.done = 0

    def line(self) -> str:
        frac = f" ({self.done / self.total:.0%})" if self.total else ""
        of = f"/{self.total}" if self.total else ""
        return f"{self.label}: {self.done}{of}{frac}, {self.clock() - self.start:.0f} s"

    def __call__(self, done: int, total: int | None = None, label: str | None = None) -> None:
        self.done = done
        self.total = total if total is not None else self.total
        self.label = label or self.label
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        print(self.line() + " done", file=self.stream, flush=True)


@contextmanager
def progress(label: str, total: int | None = None, stream: TextIO | None = None,
             interval_s: float = LOG_INTERVAL_S, quiet: bool = False) -> Iterator[Tick]:
    """``with progress("sweep", n) as tick: ... tick(done)``."""
    out = stream or sys.stderr
    if quiet:
        yield lambda done, total=None, label=None: None
        return
    if out.isatty():
        from rich.console import Console
        from rich.progress import Progress

        with Progress(*Progress.get_default_columns(), console=Console(file=out),
                      transient=True) as bar:
            task = bar.add_task(label, total=total)

            def tick(done: int, total: int | None = None, label: str | None = None) -> None:
                bar.update(task, completed=done, total=total if total is not None else None,
                           description=label or bar.tasks[0].description)

            yield tick
        return
    lines = LineProgress(label, total, out, interval_s)
    yield lines
    lines.finish()
