"""`sweep` keeps each finished point on disk as it completes; `--resume` skips them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfleet.sim.sweep import append_journal, journal_path, load_grid, read_journal, run_sweep


def test_a_crashed_sweep_resumes_where_it_stopped(two_vendor_plan, tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(two_vendor_plan.model_dump_json())
    grid = tmp_path / "grid.yaml"
    grid.write_text("plan: plan.json\ntraffic: {duration: 10}\n"
                    "grid:\n  price:mi300x: [1.0, 3.0]\n  fail: [none, vendor=Nobody]\n")
    spec = load_grid(grid)
    journal = journal_path(tmp_path / "out.parquet")

    class Crash(Exception):
        pass

    def crash_after_two(i: int, row: dict) -> None:
        append_journal(journal, spec, i, row)
        if i == 1:
            raise Crash

    with pytest.raises(Crash):
        run_sweep(spec, local=True, on_point=crash_after_two)
    with journal.open("a") as fh:
        fh.write('{"key": [2, {"fail"')  # a torn last line, as a crash mid-write leaves
    done = read_journal(journal, spec)
    assert sorted(done) == [0, 1]
    ran: list[int] = []
    rows = run_sweep(spec, local=True, on_point=lambda i, row: ran.append(i), done_rows=done)
    assert ran == [2, 3]  # only the points not finished before the crash
    full = run_sweep(spec, local=True)
    assert [r["point"] for r in rows] == [0, 1, 2, 3]
    assert [(r["status"], r.get("cost_usd")) for r in rows] == \
        [(r["status"], r.get("cost_usd")) for r in full]
    # A changed grid does not reuse rows of other points.
    grid.write_text("plan: plan.json\ntraffic: {duration: 10}\n"
                    "grid:\n  price:mi300x: [2.0, 3.0]\n  fail: [none, vendor=Nobody]\n")
    assert read_journal(journal, load_grid(grid)) == {}
