"""Why a plan decodes a tier speculatively: the same scenario re-solved with plain
decoding only (every other constraint kept), and each such tier's spend in both plans.

Speculation trades compute for steps: each decode step verifies ``k`` proposed tokens
and advances ``E`` of them, so a pool whose batch the TPOT SLO holds back serves more
requests per replica at the same TPOT; where the batch is limited by KV memory or the
chip is compute-bound already, the extra verify and draft work costs more than it
gives, and the plain option wins. The planner prices both (``Tier.speculative``) and
the MILP picks per pool; this module says what the choice saved."""

from __future__ import annotations

from collections.abc import Callable

from tokenfleet.perf.speculative import parse_speculation
from tokenfleet.plan.candidates import CandidateSet
from tokenfleet.plan.disagg_why import _chosen, _tier_usd_per_h, saving_text, solve_without
from tokenfleet.plan.milp import Formulation, Solution
from tokenfleet.plan.scenario import Scenario
from tokenfleet.plan.schema import Plan


def explain_speculation(plan: Plan, sc: Scenario, cs: CandidateSet, f: Formulation,
                        sol: Solution, bill: Callable[[Formulation, Solution], float]
                        ) -> None:
    """Fill ``TierSummary.speculative`` of every tier with a speculative pool and add the
    plain-decoding plan as a baseline (one more solve, only when speculation is used)."""
    chosen = _chosen(f, sol)
    tiers = sorted({c.tier for c, _ in chosen if c.speculative})
    if not tiers:
        return
    spec_pairs = {c.pair for c in cs.candidates if c.speculative and c.pair}
    plain, base = solve_without(
        sc, cs, lambda c: not c.speculative and c.pair not in spec_pairs, bill,
        "plain decoding only", "the same constraints, no speculative decoding")
    plan.baselines.append(base)
    with_h, plain_h = _tier_usd_per_h(chosen), _tier_usd_per_h(plain)
    hours = sc.hours_per_month
    for t in plan.tiers:
        if t.name not in tiers:
            continue
        mine = [(c, r) for c, r in chosen if c.tier == t.name]
        spec_chips = sum(c.count * r for c, r in mine if c.speculative)
        settings = sorted({c.speculative for c, _ in mine if c.speculative})
        runs = ", ".join(f"{s} ({parse_speculation(s).tokens_per_step:.2f} tokens/step "
                         "expected)" for s in settings)
        share = spec_chips / max(sum(c.count * r for c, r in mine), 1)
        text = f"{runs} on {share:.0%} of the tier's chips"
        text += "; " + saving_text(t.name, with_h, plain_h, hours, "plain-decoding",
                                   plan.cost.usd_per_month, base)
        busiest = max(((c, r) for c, r in mine if c.speculative),
                      key=lambda cr: cr[0].count * cr[1])[0]
        e = max(busiest.estimates.values(), key=lambda e: e.requests_per_s or 0.0)
        text += (f"; its largest pool, {busiest.accelerator.id} x{busiest.count}, runs "
                 f"{e.concurrency or 0:.0f} sequences per unit at TPOT "
                 f"{(e.tpot_s or 0) * 1e3:.0f} ms")
        t.speculative = text
