"""The day-long plan (`plan --over-day`): profiles, the day program against independent
per-hour solves of the peak program, and a simulated day with spot reclaims."""

from __future__ import annotations

from dataclasses import replace as dc_replace
from pathlib import Path

import pytest

from tokenfleet.catalog import load_catalog
from tokenfleet.cli.app import main
from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.day import day_profiles, plan_day, reclaim_covered, uncovered_chance
from tokenfleet.plan.milp import solve_fleet
from tokenfleet.plan.planner import bill, prepare, solve_plan
from tokenfleet.plan.scenario import load_scenario
from tokenfleet.sim.day import reclaim_share, representative_periods, simulate_day
from tokenfleet.workload.day import bundled_profiles, profile_from_values

ROOT = Path(__file__).resolve().parents[2]
SMALL = ROOT / "tests/data/day_small.yaml"
CAT = load_catalog()


@pytest.fixture(scope="module")
def small():
    sc, base = load_scenario(SMALL)
    cs = prepare(sc, base, CAT)
    peak = solve_plan(sc, cs, sc.name, CAT, compare_policies=False)
    return sc, base, cs, peak


def test_bundled_profiles_peak_at_one_and_swing_within_the_cited_range() -> None:
    p = bundled_profiles()["weekday"]
    assert len(p.multipliers) == 24 and max(p.multipliers) == 1.0
    assert 2.0 <= p.peak_to_trough <= 4.0
    assert p.label(14) == "14:00"
    assert profile_from_values([2.0] * 48, "x").period_h == 0.5


def test_profile_from_a_day_long_trace_counts_arrivals_per_hour() -> None:
    import numpy as np

    from tokenfleet.workload.day import profile_from_trace
    from tokenfleet.workload.trace import Trace

    # 10 requests in every hour, 40 in hour 14: the profile is 0.25 everywhere else
    hours = [h for h in range(24) for _ in range(40 if h == 14 else 10)]
    arrival = np.sort(np.array(hours, float) * 3600 + 1800)
    n = len(arrival)
    tr = Trace(arrival, np.ones(n, np.int64), np.ones(n, np.int64), source="synthetic")
    p = profile_from_trace(tr)
    assert p.multipliers[14] == 1.0 and set(p.multipliers) == {1.0, 0.25}
    with pytest.raises(TokenfleetError, match="spans 1.0 h; a day profile needs"):
        profile_from_trace(Trace(arrival[:20], np.ones(20, np.int64), np.ones(20, np.int64),
                                 source="short"))


@pytest.mark.parametrize("bad, msg", [
    ([1.0] * 23, "23 values; give one per hour or finer: 24, 48, 72, 96"),
    ([1.0] * 23 + [-1.0], "value 23 is -1.0; multipliers must be finite numbers >= 0"),
    ([0.0] * 24, "all values are 0"),
    ("weekend", "unknown profile 'weekend'; bundled: flat, weekday"),
])
def test_bad_profile_gets_one_clear_error(tmp_path: Path, capsys, bad, msg: str) -> None:
    text = SMALL.read_text().replace("day_profile: weekday", f"day_profile: {bad!r}"
                                     .replace("'", '"') if isinstance(bad, str) else
                                     f"day_profile: {bad}")
    p = tmp_path / "bad.yaml"
    p.write_text(text.replace("../../src", str(ROOT / "src")))
    with pytest.raises(TokenfleetError) as e:
        load_scenario(p)
    assert msg in str(e.value) and "day_profile" in str(e.value)
    with pytest.raises(SystemExit) as ex:
        main(["plan", str(p), "--over-day", "--no-verify", "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_flat_day_without_spot_costs_the_peak_plan(small) -> None:
    """Constant traffic and no spot: every hour is the peak hour, so the day plan's bill
    is the peak plan's (within the two solves' gaps)."""
    sc, base, cs, peak = small
    flat = sc.model_copy(deep=True, update={"day": sc.day.model_copy(update={"spot": False})})
    flat.tiers[0].traffic.day_profile = "flat"
    day = plan_day(flat, cs, peak, base, CAT, 20).plan
    assert day.usd_per_month == pytest.approx(peak.cost.usd_per_month, rel=2 * sc.mip_gap)
    assert all(p.layer != "spot" for p in day.pools)


def test_spot_that_is_mostly_reclaimed_is_not_bought(small) -> None:
    """At 95 % reclaimed per hour a spot replica holds 5 % of its capacity for ~21 % of
    the on-demand price: dearer per request than any other layer."""
    sc, base, cs, peak = small
    markets = {"aws": {"interruption_per_hour": 0.95}}
    sc2 = sc.model_copy(update={"day": sc.day.model_validate({"spot_markets": markets})})
    day = plan_day(sc2, cs, peak, base, CAT, 20).plan
    assert not any(p.layer == "spot" for p in day.pools)
    assert "aws 95%/h" in day.spot_rule


def test_day_plan_matches_hourly_peak_solves_when_hours_are_independent(small) -> None:
    """Without reserved capacity, commitments or spot the hours do not interact: the day
    plan's bill is the sum of the peak program solved on each hour's demand alone."""
    sc, base, cs, peak = small
    sc2 = sc.model_copy(update={
        "supply": [s for s in sc.supply if s.price_kind != "reserved"],
        "day": sc.day.model_copy(update={"spot": False})})
    cs2 = prepare(sc2, base, CAT)
    peak2 = solve_plan(sc2, cs2, sc2.name, CAT, compare_policies=False)
    day = plan_day(sc2, cs2, peak2, base, CAT, 30).plan
    prof = day_profiles(sc2, base)["code"]
    hourly = 0.0
    for m in prof.multipliers:
        cs_h = dc_replace(cs2, demands=[dc_replace(d, rate_per_s=d.rate_per_s * m)
                                        for d in cs2.demands])
        f, sol = solve_fleet(sc2, cs_h)
        hourly += bill(sc2, f, sol) / len(prof.multipliers)
    # both are MILPs stopped at a relative gap; the day's is measured against its LP bound
    assert day.usd_per_month <= hourly * (1 + sc2.mip_gap) + 1e-6
    assert day.usd_per_month >= hourly * (1 - sc2.mip_gap) - 1e-6


def test_day_plan_is_cheaper_than_peak_and_meets_slos_with_spot_reclaims(small) -> None:
    sc, base, cs, peak = small
    ds = plan_day(sc, cs, peak, base, CAT, 20)
    day = ds.plan
    assert day.usd_per_month < peak.cost.usd_per_month
    assert day.saving_usd_per_month == pytest.approx(peak.cost.usd_per_month
                                                      - day.usd_per_month)
    assert any(p.layer == "spot" for p in day.pools)
    for p in day.periods:  # capacity at the tier's mix covers each hour's demand
        for t, need in p.demand_requests_per_s.items():
            assert p.capacity_requests_per_s[t] >= need * 0.999
    for p in day.pools:
        if p.layer == "reserved":
            assert len(set(p.replicas)) == 1  # a reserved count is held all day
    sim = simulate_day(day, ds.period_plan, str(SMALL), window_s=60.0, seed=0)
    whys = ", ".join(p.why for p in sim.periods).split(", ")
    assert "trough" in whys and "peak" in whys
    assert sum(p.spot_lost for p in sim.periods) > 0  # spot reclaims were simulated
    assert sim.met, sim.periods
    for p in sim.periods:
        for c in p.tiers:
            assert c.requests > 0
            assert (c.ttft_attainment or 0) >= c.target_ttft
            assert (c.tpot_attainment or 0) >= c.target_tpot


def test_covered_reclaims_are_the_expected_losses_rounded_up_at_least_one() -> None:
    assert [reclaim_covered(n, 0.05) for n in (0, 1, 2, 20, 21, 40)] == [0, 1, 1, 1, 2, 2]
    assert reclaim_covered(3, 0.9) == 3  # never more than are held
    # two replicas at 20 %/h, one covered: both go with probability 0.2^2
    assert uncovered_chance(2, 0.2, 1.0) == pytest.approx(0.04)
    assert uncovered_chance(1, 0.2, 1.0) == 0.0


def test_each_pool_carries_its_routed_load_with_its_covered_spot_reclaims_gone(small) -> None:
    """The spot rule in the solved plan: in every period, every pool of the period's
    fleet (a spot layer less its covered reclaims, at least one whole replica) has the
    capacity at the SLO percentile for the rate the day program routes to it."""
    sc, base, cs, peak = small
    ds = plan_day(sc, cs, peak, base, CAT, 20)
    rate = {p.pool: p.interruption_per_hour for p in ds.plan.pools if p.layer == "spot"}
    assert rate and "at least one" in ds.plan.spot_rule
    for h in range(ds.plan.periods_per_day):
        plan = ds.period_plan(h)
        for u in plan.units:
            lost = reclaim_covered(u.replicas, rate[u.pool]) if u.pool in rate else 0
            assert lost >= (1 if u.pool in rate else 0)
            cap = {c.bucket: c.requests_per_s for c in u.capacity}
            busy = sum(s.peak_requests_per_s * s.shares.get(u.pool, 0.0) / cap[s.bucket]
                       for s in plan.traffic_split if u.pool in s.shares)
            assert busy <= (u.replicas - lost) * (1 + 1e-6) + 1e-9, (h, u.pool, busy)


def test_period_routing_stays_within_each_tier() -> None:
    """Two tiers share bucket names; a period's split routes each tier's bucket only to
    that tier's pools (its model), never to another tier's."""
    sc, base = load_scenario(SMALL)
    t2 = sc.tiers[0].model_copy(deep=True, update={"name": "chat"})
    sc2 = sc.model_copy(update={"tiers": [sc.tiers[0], t2]})
    cs = prepare(sc2, base, CAT)
    peak = solve_plan(sc2, cs, sc2.name, CAT, compare_policies=False)
    ds = plan_day(sc2, cs, peak, base, CAT, 20)
    tier_of = {p.pool: p.tier for p in ds.plan.pools}
    for h in (0, 14):
        splits = ds.period_plan(h).traffic_split
        assert {s.tier for s in splits} == {"code", "chat"}
        for s in splits:
            assert s.shares and all(tier_of[k] == s.tier for k in s.shares), (h, s)
            assert sum(s.shares.values()) == pytest.approx(1.0)


def test_simulated_day_meets_slos_with_one_replica_of_every_spot_pool_reclaimed(
        small) -> None:
    """Reclaims by design, not by luck: every period replayed (seeded) with the plan's
    covered reclaims (here one whole replica of each spot pool, from the window's start),
    the worst period (largest share of chips reclaimed) among them; every tier still
    meets its SLO percentiles."""
    sc, base, cs, peak = small
    ds = plan_day(sc, cs, peak, base, CAT, 20)
    day = ds.plan
    worst = max(range(day.periods_per_day), key=lambda h: reclaim_share(day, h))
    assert any(h == worst and "largest reclaim share" in why
               for h, why in representative_periods(day))
    sim = simulate_day(day, ds.period_plan, str(SMALL), window_s=60.0, seed=3,
                       spot_loss="covered", only=list(range(day.periods_per_day)))
    assert len(sim.periods) == day.periods_per_day and "covered reclaims" in sim.method
    for p in sim.periods:
        pools = [pl for pl in day.pools if pl.layer == "spot" and pl.replicas[p.period]]
        assert pools and p.spot_lost == len(pools)  # 20 %/h of <= 5 replicas: one each
        for c in p.tiers:
            assert c.requests > 0
            assert (c.ttft_attainment or 0) >= c.target_ttft, (p.start, c)
            assert (c.tpot_attainment or 0) >= c.target_tpot, (p.start, c)
    assert sim.met


def _pd_day(tmp_path: Path) -> Path:
    """DeepSeek-R1 agent traffic (12k-token prompts, 400 out) on H200, where the peak
    plan serves through a disaggregated prefill/decode pair (tests/plan/test_disagg.py),
    over the weekday profile, on-demand only (a pair has no spot layer)."""
    p = tmp_path / "pd-day.yaml"
    p.write_text("""name: pd-day
headroom: 0.0
tiers:
  - name: t
    model: deepseek-r1
    precisions: [fp8]
    traffic: {rate_per_s: 30, day_profile: weekday,
              mix: [{input_len: 12000, output_len: 400, share: 1}]}
    slo: {ttft_s: 20.0, tpot_s: 0.1, ttft_percentile: 99, tpot_percentile: 90}
supply:
  - {accelerator: h200, cloud: aws, region: us-east, max_chips: 512}
day: {spot: false}
""")
    return p


def test_pair_prefill_halves_carry_their_decode_halves_requests_every_period(
        tmp_path: Path) -> None:
    """The day program applies the peak program's pair rows: in every period, a pair's
    prefill half prefills what its decode half decodes, so it holds the replicas for it
    (pool_load <= 1, as for every pool). Without those rows the day held decode halves
    with no prefill behind them (88 % "cheaper" than the peak plan, an impossible
    fleet), and a simulated period queued at the prefill half."""
    from tokenfleet.plan.check import pool_load, prefill_halves

    path = _pd_day(tmp_path)
    sc, base = load_scenario(path)
    cs = prepare(sc, base, CAT)
    peak = solve_plan(sc, cs, sc.name, CAT, compare_policies=False)
    assert any(u.role == "prefill" for u in peak.units)  # the premise: a pair at peak
    ds = plan_day(sc, cs, peak, base, CAT, 20)
    assert ds.plan.usd_per_month <= peak.cost.usd_per_month * (1 + 1e-9)
    pairs = 0
    for h in range(ds.plan.periods_per_day):
        plan = ds.period_plan(h)
        routed = {k for s in plan.traffic_split for k in s.shares}
        pre = prefill_halves(plan)
        for u in plan.units:
            if u.role == "decode" and u.pool in routed:
                assert u.pool in pre, (h, u.pool)  # no decode half without its prefill
                pairs += 1
        for pool, load in pool_load(plan).items():
            assert load is not None and load <= 1 + 1e-6, (h, pool, load)
    assert pairs  # the day serves through the pair
    sim = simulate_day(ds.plan, ds.period_plan, str(path), window_s=60.0, seed=0)
    assert sim.met, sim.periods


def test_report_plots_capacity_against_demand_and_layer_costs(small) -> None:
    from tokenfleet.report.plan_html import render_plan_report

    sc, base, cs, peak = small
    ds = plan_day(sc, cs, peak, base, CAT, 20)
    html = render_plan_report(peak.model_copy(update={"day": ds.plan}))
    assert "fig-day-capacity" in html and "fig-day-layers" in html
    assert "Over the day" in html and "peak-hour plan held all day" in html
    assert "fig-day-capacity" not in render_plan_report(peak)


@pytest.mark.slow
def test_example_day_is_cheaper_than_its_peak_plan_and_holds_in_a_simulated_day(
        tmp_path: Path) -> None:
    """The bundled day example end to end, as README shows it (verified peak plan,
    then the day and its simulated day); ~2 min on 2 cores."""
    out = tmp_path / "plan.json"
    main_args = ["plan", str(ROOT / "examples/frontier-lab-day.yaml"), "--over-day",
                 "--out", str(out), "--report", "-"]
    main(main_args)  # exits (non-zero) only on an error
    from tokenfleet.plan.schema import Plan

    plan = Plan.model_validate_json(out.read_text())
    assert plan.day is not None and plan.day.simulation is not None
    assert plan.day.usd_per_month < plan.cost.usd_per_month
    assert plan.day.simulation.met
    assert sum(p.spot_lost for p in plan.day.simulation.periods) > 0
