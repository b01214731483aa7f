"""Memory does not grow with the number of finished requests."""

from __future__ import annotations

import tracemalloc

from tokenfleet.sim.metrics import CompletionBuffer
from tokenfleet.sim.run import simulate
from tokenfleet.sim.traffic import planned_traffic


def test_peak_memory_flat_in_finished_requests(two_vendor_plan, monkeypatch) -> None:
    # Finished requests wait in a fixed-size buffer before going into the histograms;
    # a small buffer makes the bound visible with few requests.
    monkeypatch.setattr(CompletionBuffer, "FLUSH_AT", 256)
    rate = 60.0
    short = planned_traffic(two_vendor_plan, 10, rate, seed=1)
    long = planned_traffic(two_vendor_plan, 50, rate, seed=1)
    simulate(two_vendor_plan, short)  # warm caches (catalog, fit) outside the measurement
    peaks = []
    tracemalloc.start()
    try:
        for w in (short, long):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            res = simulate(two_vendor_plan, w)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
            assert res.summary.completed == len(w)
            del res
    finally:
        tracemalloc.stop()
    extra = len(long) - len(short)
    assert extra > 2000
    # Keeping ~0.5 kB per finished request would add > 1 MB; histograms, counters and
    # the time series are fixed-size (the per-20-ms departure counts add ~8 B/window).
    assert peaks[1] - peaks[0] < 200_000, peaks
