"""Admission control (``SimOptions(admission="ttft")``, ``--admission ttft``): requests
whose predicted queueing delay exceeds the tier's TTFT SLO on every pool of the tier are
turned away at the door, like the gateway's 429 backpressure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tokenfleet.errors import TokenfleetError
from tokenfleet.sim.engine import SHED, SimOptions
from tokenfleet.sim.results import merge_records, summarize
from tokenfleet.sim.run import independent_parts, run_part, simulate
from tokenfleet.sim.shocks import parse_failure
from tokenfleet.sim.traffic import planned_traffic, scale_traffic

from .test_split import _assert_same, _comparable

TTFT = SimOptions(admission="ttft")


def _conserved(s) -> None:
    assert s.checks.conservation_ok and s.completed + s.rejected == s.requests
    assert s.checks.littles_law.ok
    for t in s.tiers.values():
        assert t.completed + t.rejected == t.requests
        assert t.shed <= t.rejected
        assert t.goodput_fraction == pytest.approx(t.slo_attainment)


def test_no_shedding_under_light_load(two_vendor_plan) -> None:
    """At the planned rate nothing queues for long: nothing is shed and the run is the
    run without admission control, request for request."""
    w = planned_traffic(two_vendor_plan, 60, seed=2)
    on = simulate(two_vendor_plan, w, options=TTFT).summary
    off = simulate(two_vendor_plan, w).summary
    _conserved(on)
    assert on.rejected == 0 and all(t.shed == 0 for t in on.tiers.values())
    a, b = _comparable(on), _comparable(off)
    a.pop("admission")
    b.pop("admission")
    _assert_same(a, b)


def test_overload_sheds_and_keeps_queues_within_the_slo(two_vendor_plan) -> None:
    w = scale_traffic(planned_traffic(two_vendor_plan, 60, seed=3), 4.0, seed=3)
    off = simulate(two_vendor_plan, w).summary
    on = simulate(two_vendor_plan, w, options=TTFT).summary
    _conserved(on)
    _conserved(off)
    tier = on.tiers["chat"]
    assert tier.shed > 0.1 * tier.requests
    assert on.rejected_by_reason == {SHED: tier.shed}
    # The requests let in wait about as long as the SLO allows, not minutes.
    assert off.tiers["chat"].queue_s.p90 > 5 * tier.slo_ttft_s
    assert tier.queue_s.p90 < 2 * tier.slo_ttft_s
    # More of the offered traffic meets the SLO when the excess is turned away.
    assert tier.goodput_fraction > off.tiers["chat"].goodput_fraction


def test_sheds_only_while_a_vendor_is_down(two_vendor_plan) -> None:
    """With one vendor out, the other takes all traffic at ~1.2x its capacity; before
    and after the outage nothing is shed."""
    w = scale_traffic(planned_traffic(two_vendor_plan, 90, seed=5), 1.2, seed=5)
    fail = [parse_failure("vendor=NVIDIA@t=30..60")]
    out = simulate(two_vendor_plan, w, failures=fail, options=TTFT)
    s = out.summary
    _conserved(s)
    assert s.tiers["chat"].shed > 0 and s.retried > 0
    whole = simulate(two_vendor_plan, w, options=TTFT).summary
    assert whole.tiers["chat"].shed == 0


def test_parts_merge_with_admission_control(two_tier_plan) -> None:
    w = scale_traffic(planned_traffic(two_tier_plan, 40, seed=6), 3.0, seed=6)
    fails = [parse_failure("vendor=NVIDIA@t=10..25")]
    one = simulate(two_tier_plan, w, failures=fails, options=TTFT)
    assert one.summary.rejected > 0
    opt = replace(TTFT, sample_s=one.record.sample_s, max_time_s=w.duration_s + 7 * 86400.0)
    recs = [run_part(two_tier_plan.model_dump_json(), ids, w.subset(mask), opt, fails, [],
                     None) for ids, mask in independent_parts(two_tier_plan, w)]
    _assert_same(_comparable(one.summary), _comparable(summarize(merge_records(recs))))


def test_unknown_mode(two_vendor_plan) -> None:
    with pytest.raises(TokenfleetError, match="admission 'queue-forever'"):
        simulate(two_vendor_plan, planned_traffic(two_vendor_plan, 5, seed=1),
                 options=SimOptions(admission="queue-forever"))
