"""Why a plan serves a tier by disaggregated prefill/decode pairs: the same scenario
re-solved without any pair (every other constraint kept), and each such tier's spend in
both plans, with what changed in the pools that do the work."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from tokenfleet.plan.candidates import Candidate, CandidateSet, Demand
from tokenfleet.plan.milp import Formulation, Solution, polish, solve_fleet
from tokenfleet.plan.scenario import Scenario
from tokenfleet.plan.schema import Baseline, Plan


def _chosen(f: Formulation, sol: Solution) -> list[tuple[Candidate, int]]:
    assert sol.x is not None
    return [(c, int(round(sol.x[f.n[c.id]]))) for c in f.cands if round(sol.x[f.n[c.id]]) > 0]


def _tier_usd_per_h(chosen: list[tuple[Candidate, int]]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for c, reps in chosen:
        out[c.tier] += c.usd_per_hour * reps
    return out


def solve_without(sc: Scenario, cs: CandidateSet, keep: Callable[[Candidate], bool],
                  bill: Callable[[Formulation, Solution], float], name: str, note: str
                  ) -> tuple[list[tuple[Candidate, int]], Baseline]:
    """The scenario re-solved over the candidates ``keep`` accepts (every constraint
    kept), polished as the plan was: its chosen pools and its baseline row."""
    g, s2 = solve_fleet(sc, cs, candidates=[c for c in cs.candidates if keep(c)])
    if s2.ok and (sc.contracts or any(x.prepaid for x in sc.supply)):
        g, s2 = polish(sc, cs, g, s2)  # as the plan was: least list spend at its bill
    base = Baseline(name=name, usd_per_month=bill(g, s2) if s2.ok else None,
                    feasible=s2.ok, note=note, drops=[])
    return (_chosen(g, s2) if s2.ok else []), base


def saving_text(tier: str, with_h: dict[str, float], other_h: dict[str, float],
                hours: float, other: str, bill_usd: float, base: Baseline) -> str:
    """What serving ``tier`` as the plan does saves against the best ``other`` plan
    (``base``, the same constraints), at list, per month."""
    if base.usd_per_month is None or not other_h.get(tier):
        return f"no {other} plan meets the constraints"
    save = (other_h[tier] - with_h[tier]) * hours
    return (f"{'saves' if save >= 0 else 'costs'} {abs(save):,.0f} USD/month at list "
            f"({abs(save) / (other_h[tier] * hours):.0%}) {'' if save >= 0 else 'more '}"
            f"on this tier vs the best {other} plan under the same constraints (bill "
            f"{bill_usd:,.0f} vs {base.usd_per_month:,.0f} USD/month)")


def _busiest(chosen: list[tuple[Candidate, int]], tier: str, roles: tuple[str, ...]
             ) -> Candidate | None:
    mine = [(c, r) for c, r in chosen if c.tier == tier and c.role in roles]
    return max(mine, key=lambda cr: cr[1] * cr[0].count)[0] if mine else None


def _mechanics(d: Demand, dec: Candidate, pre: Candidate, agg: Candidate | None) -> str:
    """Decode batch and TPOT of the pair against the aggregated unit's, at one bucket."""
    ed, ep = dec.estimates.get(d.bucket), pre.estimates.get(d.bucket)
    if ed is None or ep is None:
        return ""
    text = (f"at {d.input_len} in / {d.output_len} out the decode pool runs "
            f"{ed.concurrency or 0:.0f} sequences per unit at TPOT {(ed.tpot_s or 0) * 1e3:.0f}"
            f" ms, {ed.requests_per_s or 0:.2f} req/s per unit")
    ea = agg.estimates.get(d.bucket) if agg else None
    if agg is not None and ea is not None:
        text += (f", where the aggregated {agg.accelerator.id} x{agg.count} (its steps also "
                 f"carry {d.input_len}-token prompt chunks) runs {ea.concurrency or 0:.0f} "
                 f"at TPOT {(ea.tpot_s or 0) * 1e3:.0f} ms, {ea.requests_per_s or 0:.2f} "
                 "req/s per unit")
    link = f"; KV handover {(ep.kv_transfer_s or 0) * 1e3:.1f} ms on {pre.link_basis}"
    return text + link


def explain_disaggregation(plan: Plan, sc: Scenario, cs: CandidateSet, f: Formulation,
                           sol: Solution, bill: Callable[[Formulation, Solution], float]
                           ) -> None:
    """Fill ``TierSummary.disaggregation`` of every tier the plan serves by pairs and add
    the aggregated-only plan as a baseline (one more solve, only when pairs are used)."""
    chosen = _chosen(f, sol)
    tiers = sorted({c.tier for c, _ in chosen if c.pair is not None})
    if not tiers:
        return
    agg, base = solve_without(sc, cs, lambda c: c.pair is None, bill,
                              "aggregated serving only",
                              "the same constraints, no prefill/decode pairs")
    plan.baselines.append(base)
    with_h, agg_h = _tier_usd_per_h(chosen), _tier_usd_per_h(agg)
    hours = sc.hours_per_month
    for t in plan.tiers:
        if t.name not in tiers:
            continue
        pairs = sorted({c.pair for c, _ in chosen if c.tier == t.name and c.pair})
        reps = {c.id: r for c, r in chosen}
        parts = []
        for pid in pairs:
            p_id, d_id = cs.pairs[pid]
            p = next(c for c, _ in chosen if c.id == p_id)
            d = next(c for c, _ in chosen if c.id == d_id)
            parts.append(f"prefill {reps[p_id]}x {p.accelerator.id} x{p.count} "
                         f"({p.vendor}, {p.cloud}) : decode {reps[d_id]}x "
                         f"{d.accelerator.id} x{d.count} ({d.vendor}, {d.cloud})")
        why = saving_text(t.name, with_h, agg_h, hours, "aggregated-only",
                          plan.cost.usd_per_month, base)
        dec = _busiest(chosen, t.name, ("decode",))
        pre = next(c for c, _ in chosen if dec is not None and c.id == cs.pairs[dec.pair][0]) \
            if dec is not None and dec.pair else None
        big = max((d for d in cs.demands if d.tier == t.name),
                  key=lambda d: d.rate_per_s * d.input_len)
        how = (_mechanics(big, dec, pre, _busiest(agg, t.name, ("both",)))
               if dec is not None and pre is not None else "")
        t.disaggregation = "; ".join(x for x in ("; ".join(parts), why, how) if x)
