"""Progress off a terminal: periodic plain lines on stderr, one at the end; nothing on
stdout (which --json owns)."""

from __future__ import annotations

import io

from tokenfleet.cli.progress import LineProgress, progress


def test_lines_come_every_interval_and_at_the_end() -> None:
    now = [0.0]
    out = io.StringIO()
    p = LineProgress("sweep", 10, out, interval_s=10.0, clock=lambda: now[0])
    for i in range(1, 11):
        now[0] += 4.0  # 4 s per point: lines at 12 s, 24 s, 36 s
        p(i)
    p.finish()
    lines = out.getvalue().splitlines()
    assert lines == ["sweep: 3/10 (30%), 12 s", "sweep: 6/10 (60%), 24 s",
                     "sweep: 9/10 (90%), 36 s", "sweep: 10/10 (100%), 40 s done"]


def test_non_terminal_progress_writes_only_to_its_stream(capsys) -> None:
    err = io.StringIO()
    with progress("plan", 3, stream=err, interval_s=0.0) as tick:
        for i in range(3):
            tick(i + 1)
    assert capsys.readouterr().out == ""
    assert err.getvalue().splitlines()[-1].startswith("plan: 3/3 (100%)")
