"""A simulated day: replay representative periods of a day plan with spot losses.

Replaying 24 hours of traffic for every plan would take minutes, so this replays the
periods that decide whether the day plan holds (a cheaper approximation, stated in
the result):

* the peak period (most demand), the trough (least), the period holding the most
  spot replicas, and the period whose planned reclaims take the largest share of the
  chips held (:func:`reclaim_share`; the one most exposed to interruptions);
* each for ``window_s`` seconds of every tier's scenario traffic (the trace the plan
  was sized on, scaled as the planner scales it), thinned to the period's multiplier
  per tier (each request kept with that probability: a resample at the period's
  rate that keeps the trace's burst shape);
* through that period's fleet (every layer) with the day program's routing split;
* with spot interruptions (seeded, :mod:`tokenfleet.sim.shocks` failures
  ``replicas=POOL:N``), ``spot_loss``:

  - ``"expected"`` (default): replicas x its cloud's hourly interruption rate of each
    spot pool are reclaimed (rounded at random to a whole replica; an hour's losses
    squeezed into the window, so the replay is harsher than the hour), each at a
    uniform time in the window, and stay down;
  - ``"covered"``: exactly the reclaims the plan's spot rule covers
    (:func:`tokenfleet.plan.day.reclaim_covered`: the expected losses rounded up, at
    least one whole replica) from every spot pool at once, down from the window's
    start: the worst case the plan promises to carry.

Attainment per tier and SLO is the share of arrived requests within it (rejected and
failed requests are misses, :func:`tokenfleet.sim.verify.tier_check`); the day's
figure pools every simulated request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.day import SPOT_SUFFIX, reclaim_covered
from tokenfleet.plan.day_schema import (
    DayPlan,
    DaySimPeriod,
    DaySimTier,
    DaySimulation,
)
from tokenfleet.plan.schema import Plan, TierSummary
from tokenfleet.sim.disagg import run_plan
from tokenfleet.sim.engine import SimOptions, auto_sample_s
from tokenfleet.sim.results import SimSummary, summarize
from tokenfleet.sim.shocks import Failure
from tokenfleet.sim.traffic import Workload, scenario_traffic
from tokenfleet.sim.verify import SHRINK_MAX, _pool_percentiles, _shrink, tier_check

SpotLoss = Literal["expected", "covered"]


def reclaim_share(day: DayPlan, h: int) -> float:
    """Share of the chips held in period ``h`` that the plan's covered spot reclaims
    take (:func:`tokenfleet.plan.day.reclaim_covered` per spot pool)."""
    held = sum(pl.replicas[h] * pl.chips_per_replica for pl in day.pools)
    lost = sum(reclaim_covered(pl.replicas[h], pl.interruption_per_hour)
               * pl.chips_per_replica for pl in day.pools if pl.layer == "spot")
    return lost / held if held else 0.0


def representative_periods(day: DayPlan) -> list[tuple[int, str]]:
    """(period, why): peak demand, trough demand, most spot chips, largest share of
    chips reclaimed under the spot rule (distinct)."""
    total = [sum(p.demand_requests_per_s.values()) for p in day.periods]
    spot = [sum(pl.replicas[h] * pl.chips_per_replica for pl in day.pools if pl.layer == "spot")
            for h in range(len(day.periods))]
    picks: dict[int, list[str]] = {}
    picks.setdefault(int(np.argmax(total)), []).append("peak")
    picks.setdefault(int(np.argmin(total)), []).append("trough")
    if max(spot) > 0:
        picks.setdefault(int(np.argmax(spot)), []).append("most spot")
        share = [reclaim_share(day, h) for h in range(len(day.periods))]
        picks.setdefault(int(np.argmax(share)), []).append("largest reclaim share")
    return [(h, ", ".join(why)) for h, why in sorted(picks.items())]


def thin(w: Workload, keep: dict[str, float], seed: int) -> Workload:
    """Keep each request of tier t with probability ``keep[t]`` (<= 1)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xDA7]))
    p_key = np.array([min(keep.get(k.tier, 1.0), 1.0) for k in w.keys])
    mask = rng.random(len(w)) < p_key[w.key] if len(w) else np.zeros(0, bool)
    return w.subset(mask, f"{w.source} thinned")


def spot_failures(day: DayPlan, h: int, window_s: float, seed: int,
                  spot_loss: SpotLoss = "expected") -> list[Failure]:
    """Seeded spot reclaims in period ``h``. ``expected``: per spot pool, its expected
    losses (replicas x hourly rate) rounded up or down at random with the right mean
    (the Binomial's mean without its luck of drawing none), each down from a uniform
    time in the window to its end. ``covered``: the plan's covered reclaims of every
    spot pool, all down from t = 0. Cumulative ``replicas=POOL:k`` failures: the
    engine takes out the first k replicas."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B07, h]))
    out = []
    for pl in day.pools:
        r = pl.replicas[h]
        if pl.layer != "spot" or r == 0:
            continue
        if spot_loss == "covered":
            lost = reclaim_covered(r, pl.interruption_per_hour)
            times = np.zeros(lost)
        else:
            expected = r * pl.interruption_per_hour
            lost = int(expected) + int(rng.random() < expected - int(expected))
            times = np.sort(rng.random(lost) * window_s)
        for k, t in enumerate(times, start=1):
            out.append(Failure("replicas", pl.pool, k, float(t), None,
                               f"replicas={pl.pool}:{k}@t={t:.0f}"))
    return out


def _note_shrink(shrink: dict[str, float], summ: SimSummary, t: TierSummary) -> None:
    """Capacity factors for missing tier ``t``: each pool whose own SLO percentile
    missed, by its miss (:func:`tokenfleet.sim.verify._shrink`, keyed by candidate pool
    id; a spot layer counts for its pool), the smallest over the replayed periods; when
    no pool missed on its own, the whole tier (``tier:NAME``) by the least step. Unlike
    the peak verification, no tier-wide factor on top: the day program re-routes every
    hour, and a tier-wide cut compounds over rounds into fleets far dearer than the
    peak plan."""
    found = False
    for pid, (ttft, tpot) in _pool_percentiles(summ, t).items():
        f = min(x for x in (_shrink(ttft, t.slo_ttft_s), _shrink(tpot, t.slo_tpot_s), 1.0)
                if x is not None)
        if f < 1.0:
            k = pid.removesuffix(SPOT_SUFFIX)
            shrink[k] = min(shrink.get(k, 1.0), f)
            found = True
    if not found:
        key = f"tier:{t.name}"
        shrink[key] = min(shrink.get(key, 1.0), SHRINK_MAX)


def simulate_day(day: DayPlan, period_plan: Callable[[int], Plan], scenario: str,
                 window_s: float = 300.0, seed: int = 0, spot_loss: SpotLoss = "expected",
                 only: list[int] | None = None,
                 shrink: dict[str, float] | None = None) -> DaySimulation:
    """Replay the representative periods of ``day`` (see the module docstring), or
    the periods ``only`` (each tagged with its representative reasons, if any).
    ``shrink``, when given, gets candidate pool id -> capacity factor for each pool
    (a spot layer counts for its pool) whose own SLO percentile missed in a tier that
    missed and ``tier:NAME`` for the tier (:func:`_note_shrink`)."""
    periods = []
    within: dict[str, list[float]] = {}
    picks = representative_periods(day)
    if only is not None:
        why_of = dict(picks)
        picks = [(h, why_of.get(h, "chosen")) for h in sorted(set(only))]
    for h, why in picks:
        plan = period_plan(h)
        w = scenario_traffic(plan, scenario, window_s, seed)
        w = w.subset(w.arrival_s < window_s, f"{w.source} [0, {window_s:g} s)")
        w = thin(w, day.periods[h].multiplier, seed + h)
        if len(w) == 0:
            raise TokenfleetError(f"{scenario}: no requests in the first {window_s:g} s")
        fails = spot_failures(day, h, window_s, seed, spot_loss)
        opt = SimOptions(seed=seed, sample_s=auto_sample_s(w.duration_s, SimOptions().sync_s),
                         max_time_s=w.duration_s + 7 * 86400.0)
        rec = run_plan(plan, w, opt, fails, [])  # composes disaggregated pairs
        summ = summarize(rec)
        tiers = []
        for t in plan.tiers:
            if not int(rec.tiers.arrived[rec.tiers.row(t.name)]):
                continue
            c = tier_check(rec, t, None, summ)
            if shrink is not None and not c.met:
                _note_shrink(shrink, summ, t)
            tiers.append(DaySimTier(
                tier=t.name, requests=c.requests, ttft_attainment=c.ttft_attainment,
                tpot_attainment=c.tpot_attainment, target_ttft=t.slo_ttft_percentile / 100,
                target_tpot=t.slo_tpot_percentile / 100, met=c.met))
            acc = within.setdefault(t.name, [0.0, 0.0, 0.0])
            acc[0] += c.requests
            acc[1] += (c.ttft_attainment or 0.0) * c.requests
            acc[2] += (c.tpot_attainment or 0.0) * c.requests
        periods.append(DaySimPeriod(
            period=h, start=day.periods[h].start, why=why,
            spot_replicas=sum(pl.replicas[h] for pl in day.pools if pl.layer == "spot"),
            spot_lost=len(fails),
            tiers=tiers))
    return DaySimulation(
        window_s=window_s, seed=seed, periods=periods,
        tiers={t: {"ttft": a[1] / a[0] if a[0] else None, "tpot": a[2] / a[0] if a[0] else None}
               for t, a in within.items()},
        met=all(c.met for p in periods for c in p.tiers),
        method=("representative periods (peak, trough, most spot chips, largest share "
                f"reclaimed), each replayed for {window_s:g} s of the tier traffic thinned "
                "to the period's rate, with " + (
                    "replicas x hourly interruption rate of each spot pool (rounded at "
                    "random) reclaimed at uniform times in the window"
                    if spot_loss == "expected" else
                    "the plan's covered reclaims (expected losses rounded up, at least one "
                    "replica) of every spot pool down for the whole window")),
        reproduce=f"tokenfleet plan {scenario} --over-day --day-window {window_s:g} "
                  f"--day-seed {seed}"
                  + (" --day-spot-loss covered" if spot_loss == "covered" else ""))
