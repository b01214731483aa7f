"""Plan a fleet: candidates -> MILP -> Plan, with baselines, the price of each policy
constraint, and an explanation when the scenario is infeasible."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace as dc_replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.calibration import Calibration, load_fit
from tokenfleet.plan import candidates as candidates_mod
from tokenfleet.plan.billing import bill_usd, metered_by_contract
from tokenfleet.plan.candidates import (
    DEFAULT_CONFIDENCE,
    Candidate,
    CandidateSet,
    EstimateMemo,
    build_candidates,
    risk_factor,
)
from tokenfleet.plan.check import check_plan
from tokenfleet.plan.contracts import enrich
from tokenfleet.plan.disagg_why import explain_disaggregation
from tokenfleet.plan.milp import (
    POLICY_FAMILIES,
    Formulation,
    Solution,
    fixed_monthly_cost,
    polish,
    served_by,
    solve_fleet,
)
from tokenfleet.plan.prefix import at_fleet, tier_reuses, with_prefix_caching
from tokenfleet.plan.prices import price_constraints
from tokenfleet.plan.risk import shortfall_odds
from tokenfleet.plan.scenario import Scenario, Tier
from tokenfleet.plan.schema import (
    Baseline,
    BucketSplit,
    ConstraintReport,
    ContractLimit,
    Cost,
    NMinusOneLimit,
    Plan,
    PlanLimits,
    PoolRisk,
    Risk,
    SolverInfo,
    TierSummary,
)
from tokenfleet.plan.spec_why import explain_speculation
from tokenfleet.plan.whatrows import MIN_SHARE
from tokenfleet.workload import SizeBuckets
from tokenfleet.workload.prefix import PrefixReuse

ACTIVE = 1e-6  # relative slack under which a ≤ row counts as binding


class Infeasible(TokenfleetError):
    """No plan meets every constraint; the message says which ones conflict, by how much."""


def _solve_many(sc: Scenario, cs: CandidateSet, jobs: list[dict],
                done: Callable[[], None] | None = None) -> list[tuple[Formulation, Solution]]:
    """Independent re-solves (pricing, baselines) in threads: HiGHS releases the GIL
    while it runs, so on the example's 13 re-solves two cores nearly halve the time."""
    workers = min(len(jobs), os.cpu_count() or 1, 4)
    if workers <= 1:
        out = []
        for kw in jobs:
            out.append(solve_fleet(sc, cs, **kw))
            if done:
                done()
        return out
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(solve_fleet, sc, cs, **kw) for kw in jobs]
        results = []
        for fut in futures:
            results.append(fut.result())
            if done:
                done()
        return results


def cost_breakdown(sc: Scenario, chosen: list[tuple[Candidate, int]]) -> Cost:
    """The monthly bill of a fleet (:func:`tokenfleet.plan.billing.bill_usd`, the formula
    the simulator bills a replayed window with): usage a contract covers, at its discount,
    draws down that contract's minimum; usage beyond it, and usage no contract covers, is
    paid at list; commitments and prepaid blocks are paid whatever is used."""
    hours = sc.hours_per_month
    usage = []
    fleet = prepaid_used = 0.0
    for c, reps in chosen:
        spend = c.usd_per_hour * reps * hours
        fleet += spend
        if sc.supply[c.supply_index].prepaid:
            prepaid_used += spend
            continue
        usage.append((c.accelerator.id, c.cloud, c.region, spend))
    metered = metered_by_contract(usage, [k.terms for k in sc.contracts])  # "" = none
    b = bill_usd(metered, {k.name: k.fixed_usd_per_month for k in sc.contracts},
                 prepaid_monthly_usd(sc), prepaid_used)
    return Cost(usd_per_month=b.usd, fleet_usd_per_month=fleet,
                committed_usd_per_month=b.fixed_usd,
                committed_used_usd_per_month=b.committed_used_usd,
                on_demand_usd_per_month=b.on_demand_usd)


def prepaid_monthly_usd(sc: Scenario) -> float:
    return fixed_monthly_cost(sc) - sum(k.fixed_usd_per_month for k in sc.contracts)


def chosen_units(f: Formulation, sol: Solution) -> list[tuple[Candidate, int]]:
    assert sol.x is not None
    return [(c, int(round(sol.x[f.n[c.id]]))) for c in f.cands if round(sol.x[f.n[c.id]]) > 0]


def bill(sc: Scenario, f: Formulation, sol: Solution) -> float:
    """Monthly bill of a solution, USD."""
    return cost_breakdown(sc, chosen_units(f, sol)).usd_per_month


def explain_infeasible(sc: Scenario, cs: CandidateSet) -> str:
    """Solve the elastic program and describe every constraint that had to give."""
    missing = []
    for d in cs.demands:
        if not any(c.tier == d.tier and d.bucket in c.capacity for c in cs.candidates):
            why = sorted({f"{a} {p}: {r}" for (t, b, a, p), r in cs.rejected.items()
                          if t == d.tier and b in (d.bucket, "*")})
            missing.append(f"tier '{d.tier}' bucket {d.bucket} ({d.input_len} in / "
                           f"{d.output_len} out): no supplied chip meets the SLO "
                           f"(ttft ≤ {_slo(sc, d.tier, 'ttft_s')}, "
                           f"tpot ≤ {_slo(sc, d.tier, 'tpot_s')}). Options tried:\n    "
                           + "\n    ".join(why[:12]))
    if missing:
        return "\n".join(missing)
    f, sol = solve_fleet(sc, cs, elastic=True)
    if not sol.ok:
        return f"the elastic program failed too ({sol.message})"
    assert sol.x is not None and sol.activity is not None
    lines = []
    for i, r in enumerate(f.program.rows):
        if r.slack is None:
            continue
        s = float(sol.x[r.slack])
        if s <= 1e-6 * max(r.scale, 1.0):
            continue
        act = float(sol.activity[i]) + s  # activity without the slack's contribution
        if r.family == "power":
            lines.append(f"{r.name}: cap is {r.ub / 1e6:.3g} MW; serving the demand needs at "
                         f"least {(r.ub + s) / 1e6:.3g} MW")
        elif r.family == "supply":
            lines.append(f"{r.name}: {r.detail}; the plan needs {r.ub + s:.0f}")
        elif r.family in ("demand", "n-1"):
            lines.append(f"{r.name}: needs {r.lb:.3g} req/s; at most "
                         f"{r.lb - s:.3g} can be served within the other limits")
        elif r.family in ("vendor-share", "min-share"):
            lines.append(f"{r.name}: {r.detail} cannot hold with the supply available")
        del act
    if not lines:
        return "no constraint could be identified (solver: " + sol.message + ")"
    return "\n".join(lines)


def _slo(sc: Scenario, tier: str, key: str) -> str:
    t = next(t for t in sc.tiers if t.name == tier)
    v = getattr(t.slo, key)
    return "—" if v is None else f"{v:g}s"


def plan_scenario(
    sc: Scenario,
    base: Path,
    name: str = "scenario",
    catalog: Catalog | None = None,
    cal: Calibration | None = None,
    precision_gate: Callable[[Tier, str], tuple[bool, str]] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    compare_policies: bool = True,
    price_policies: bool = False,
) -> Plan:
    """Candidates, then the cheapest plan (:func:`solve_plan`)."""
    catalog = catalog or load_catalog()
    cs = prepare(sc, base, catalog, cal, precision_gate, progress)
    return solve_plan(sc, cs, name, catalog, progress=progress,
                      compare_policies=compare_policies, price_policies=price_policies)


def prepare(sc: Scenario, base: Path, catalog: Catalog, cal: Calibration | None = None,
            precision_gate: Callable[[Tier, str], tuple[bool, str]] | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> CandidateSet:
    """Demand and candidate pools, or :class:`Infeasible` when some demand has none."""
    cal = cal or load_fit()
    step = (lambda label: (lambda i, n: progress(label, i, n))) if progress else (
        lambda label: None)
    # the performance model's answers, shared by the prefix fixed point's re-builds
    # (most of their queries repeat: only prefill-side numbers move with the hit rate)
    memo = EstimateMemo(catalog, cal)
    # the traces' offline prefix counts (reading and counting them, ~1.7 s CPU on the
    # example) beside the candidates: much of the counting runs without the GIL
    with ThreadPoolExecutor(1) as pool:
        reuse = pool.submit(tier_reuses, sc, base)
        cs = build_candidates(sc, base, catalog, cal, precision_gate, step("candidates"),
                              memo=memo)
        uncovered = [d for d in cs.demands if not any(
            c.tier == d.tier and d.bucket in c.capacity for c in cs.candidates)]
        if uncovered:
            raise Infeasible(f"scenario '{sc.name}' is infeasible:\n"
                             + explain_infeasible(sc, cs))
        # while the counts still run, the fixed point's first (plain) solve: HiGHS runs
        # without the GIL (wasted when no trace has prefix hashes, but only time spent
        # waiting anyway)
        first = None
        if not reuse.done():
            try:
                first = [_plain_solve(sc, cs)]
            except TokenfleetError:  # said where it was said before: after the counts
                first = None
        return _with_prefix_caching(sc, base, cs, catalog, cal, precision_gate,
                                    reuse.result(), memo, first)


def _plain_solve(sc: Scenario, cs: CandidateSet
                 ) -> tuple[list[tuple[Candidate, int]], float] | None:
    """The chosen units and the bill of the cheapest plan over ``cs``, or None."""
    f, sol = solve_fleet(sc, cs)
    return (chosen_units(f, sol), bill(sc, f, sol)) if sol.ok else None


def _with_prefix_caching(sc: Scenario, base: Path, cs: CandidateSet, catalog: Catalog,
                         cal: Calibration,
                         gate: Callable[[Tier, str], tuple[bool, str]] | None,
                         reuse: dict[str, PrefixReuse] | None = None,
                         memo: EstimateMemo | None = None,
                         first: list[tuple[list[tuple[Candidate, int]], float] | None]
                         | None = None) -> CandidateSet:
    """Tiers whose trace has prefix hashes priced at the hit rate it shows at the KV the
    plan buys (plan/prefix.py: a fixed point of plain solves); ``memo``: the first
    build's performance-model answers (``candidates.SHARED_MEMO``); ``first``: the
    plain solve of ``cs`` when the caller has it (in a list: it may be None)."""
    def solve(c: CandidateSet) -> tuple[list[tuple[Candidate, int]], float] | None:
        if c is cs and first:  # solved already (the same candidates, the same answer)
            return first.pop()
        return _plain_solve(sc, c)

    shared = memo if candidates_mod.SHARED_MEMO else None
    return with_prefix_caching(
        sc, base, cs, catalog, cal,
        lambda sub, hits: build_candidates(sub, base, catalog, cal, gate,
                                           prefix_hit_rates=hits, memo=shared), solve, reuse)


def scaled(cs: CandidateSet, scale: Mapping[str, float]) -> CandidateSet:
    """The candidates with the capacity of some pools scaled (the simulator found them
    slower than modelled): keys are pool ids, or ``tier:NAME`` for every candidate of
    a tier (both multiply); the same demand, every other pool unchanged."""
    if not scale:
        return cs

    def factor(c: Candidate) -> float:
        return scale.get(c.id, 1.0) * scale.get(f"tier:{c.tier}", 1.0)

    cands = [c if factor(c) == 1.0 else dc_replace(
        c, capacity={b: v * factor(c) for b, v in c.capacity.items()})
        for c in cs.candidates]
    return dc_replace(cs, candidates=cands)


def solve_plan(sc: Scenario, cs: CandidateSet, name: str, catalog: Catalog, *,
               scale: Mapping[str, float] | None = None,
               progress: Callable[[str, int, int], None] | None = None,
               compare_policies: bool = True, price_policies: bool = False) -> Plan:
    """The cheapest plan over ``cs`` (capacities scaled by ``scale``), its baselines
    (the same capacities) and the price of each constraint, independently checked.
    Without ``compare_policies``, no baselines and no prices, except the policies' (one
    re-solve each) with ``price_policies``."""
    cs = scaled(cs, scale or {})
    f, sol = solve_fleet(sc, cs)
    if sol.timed_out:
        raise TokenfleetError(f"scenario '{sc.name}': no plan found within time_limit_s="
                              f"{sc.time_limit_s:g} s ({sol.message}); raise time_limit_s or "
                              "mip_gap, or shrink the supply list")
    if not sol.ok:
        raise Infeasible(f"scenario '{sc.name}' is infeasible:\n" + explain_infeasible(sc, cs))
    if sc.contracts or any(s.prepaid for s in sc.supply):  # a bill flat over some fleets
        f, sol = polish(sc, cs, f, sol)
    total = bill(sc, f, sol)

    if compare_policies:
        constraints = price_constraints(sc, cs, f, sol, total, bill, progress)
    else:
        constraints = _constraint_reports(sc, cs, f, sol, total, False, progress)
        if price_policies:
            constraints = [r for r in constraints if r.name not in POLICY_FAMILIES] + (
                price_constraints(sc, cs, f, sol, total, bill, progress, policies_only=True))
    baselines = _baselines(sc, cs, total) if compare_policies else []
    plan = _assemble(sc, cs, f, sol, name, constraints, baselines, catalog)
    if compare_policies:  # 13 more solves on the same candidates, from this plan
        from tokenfleet.plan.prices import solution_by_name
        from tokenfleet.plan.tradeoffs import plan_tradeoffs

        if progress:
            progress("re-solving for the cost-assurance frontier and sensitivities", 0, 0)
        plan.tradeoffs = plan_tradeoffs(sc, cs, plan.cost, solution_by_name(f, sol))
    explain_disaggregation(plan, sc, cs, f, sol, lambda g, s2: bill(sc, g, s2))
    explain_speculation(plan, sc, cs, f, sol, lambda g, s2: bill(sc, g, s2))
    enrich(plan, sc)  # contracts as signed, vendor shares by basis, energy (plan.contracts)
    # Verify with code that shares nothing with the MILP (tokenfleet.plan.check).
    violations = check_plan(plan, sc, catalog)
    if violations:
        plan.notes.extend(f"CHECK FAILED {v.check}: {v.message}" for v in violations)
    else:
        plan.notes.append("independent check passed: demand split, pool capacity, supply, "
                          "power, vendor share and N-1 (re-solved as a separate LP) all hold")
    return plan


def _constraint_reports(sc: Scenario, cs: CandidateSet, f: Formulation, sol: Solution,
                        total: float, price_them: bool,
                        progress: Callable[[str, int, int], None] | None
                        ) -> list[ConstraintReport]:
    """Binding status of every cap, commitment and policy, and what dropping it would
    save per month (a re-solve without it; differences inside the optimality gaps of
    the two solves are reported as 0)."""
    assert sol.activity is not None and sol.x is not None
    rows = [(r, float(sol.activity[i])) for i, r in enumerate(f.program.rows)
            if r.family in ("supply", "power", "contract")]
    policies = sorted({r.family for r in f.program.rows if r.family in POLICY_FAMILIES})
    # a cap binds once it has no room for one more replica of its largest pool (an
    # integer plan need not fill it to the last watt: tokenfleet.plan.prices)
    binding_caps = [r for r, act in rows if r.family != "contract"
                    and r.ub - act < max(r.coefs.values(), default=0.0) * (1 - 1e-9)]
    drops = [r.name for r in binding_caps] + policies if price_them else []
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if progress:
            progress("pricing constraints", count, len(drops))

    resolved = dict(zip(drops, _solve_many(sc, cs, [{"drop": frozenset({d})} for d in drops],
                                           tick), strict=True))

    def saving(drop: str) -> float | None:
        g, s2 = resolved[drop]
        if not s2.ok:
            return None
        diff = total - bill(sc, g, s2)
        return diff if abs(diff) > (sol.gap + s2.gap) * total else 0.0

    out: list[ConstraintReport] = []
    for r, act in rows:
        if r.family == "contract":
            # row: usage - od <= commitment, so usage = activity + od
            used = act + float(sol.x[f.od[r.name.removeprefix("contract ")]])
            wasted = max(r.ub - used, 0.0)
            out.append(ConstraintReport(
                name=r.name, binding=wasted == 0.0, marginal_usd_per_month=None,
                detail=f"{r.detail}; used {min(used, r.ub):,.0f}"
                       + (f", {wasted:,.0f} wasted" if wasted else "")))
            continue
        binding = r in binding_caps
        # a binding cap nobody priced is "—", not "$0"
        marginal = (saving(r.name) if price_them else None) if binding else 0.0
        unit, scale = ("MW", 1e6) if r.family == "power" else ("chips", 1.0)
        out.append(ConstraintReport(name=r.name, binding=binding,
                                    marginal_usd_per_month=marginal,
                                    detail=f"{r.detail}; uses {act / scale:,.3g} {unit}"))
    pol = sc.policy

    def tight(r, act: float) -> bool:  # noqa: ANN001 - a milp.Row
        scale = max(abs(r.lb) if r.lb > -float("inf") else 0.0,
                    abs(r.ub) if r.ub < float("inf") else 0.0,
                    max((abs(v) for v in r.coefs.values()), default=1.0))
        return (r.ub < float("inf") and act >= r.ub - ACTIVE * scale) or (
            r.lb > -float("inf") and act <= r.lb + ACTIVE * scale)

    for fam in policies:
        marginal = saving(fam) if price_them else None
        # binding: some row of the policy is at its limit (it may still cost nothing)
        active = any(tight(r, float(sol.activity[i])) for i, r in enumerate(f.program.rows)
                     if r.family == fam)
        if fam == "vendor-share":
            detail = f"max {pol.max_vendor_share:.0%} per vendor ({pol.vendor_share_basis})"
        elif fam != "n-1":
            detail = "; ".join(r.detail for r in f.program.rows if r.family == fam)
        else:
            assert pol.n_minus_1 is not None
            detail = (f"without any one {pol.n_minus_1.by}, ≥ "
                      f"{pol.n_minus_1.min_fraction:.0%} of peak at SLO")
        out.append(ConstraintReport(name=fam, binding=active or bool(marginal),
                                    marginal_usd_per_month=marginal, detail=detail))
    return out


def _policy_drops(sc: Scenario, families: frozenset[str]) -> list[str]:
    """The scenario's policy constraints among ``families``, as a baseline lists them."""
    pol = sc.policy
    out = []
    if "vendor-share" in families and pol.max_vendor_share is not None:
        out.append(f"vendor-share (max {pol.max_vendor_share:.0%})")
    if "n-1" in families and pol.n_minus_1 is not None:
        out.append(f"n-1 (by {pol.n_minus_1.by}, {pol.n_minus_1.min_fraction:.0%})")
    if MIN_SHARE in families:
        out.extend(f"min-share ({m.tier}: {m.vendor} >= {m.min_fraction:.0%})"
                   for m in pol.min_share)
    return out


def _baselines(sc: Scenario, cs: CandidateSet, total: float) -> list[Baseline]:
    """Reference fleets, each solved under every constraint of the plan (SLOs through
    the same candidate capacities, supply, power, commitments) it can meet; ``drops``
    names the rest. A fleet of one vendor cannot meet a vendor cap below 100 % nor N-1
    by vendor, so those baselines drop them (and say so); the others keep them."""
    pol = sc.policy
    policy = frozenset(POLICY_FAMILIES)
    nv = [c for c in cs.candidates if c.vendor.upper().startswith("NVIDIA")]
    accels = sorted({c.accelerator.id for c in cs.candidates})
    one_family = frozenset(
        ({"vendor-share"} if pol.max_vendor_share is not None and pol.max_vendor_share < 1
         else set())
        | ({"n-1"} if pol.n_minus_1 is not None and pol.n_minus_1.by == "vendor" else set())
        # a floor on another vendor's share cannot be met by one vendor or one chip
        | ({MIN_SHARE} if pol.min_share else set()))
    one_drops = _policy_drops(sc, one_family)
    jobs = [{"drop": policy}] + ([{"candidates": nv, "drop": one_family}] if nv else []) + [
        {"candidates": [c for c in cs.candidates if c.accelerator.id == a],
         "drop": one_family} for a in accels]
    results = iter(_solve_many(sc, cs, jobs))
    out = []
    g, s = next(results)
    out.append(Baseline(name="cheapest mix, no policy constraints",
                        usd_per_month=bill(sc, g, s) if s.ok else None, feasible=s.ok,
                        note="supply, power, commitments and SLOs only",
                        drops=_policy_drops(sc, policy)))
    if nv:
        g, s = next(results)
        out.append(Baseline(name="NVIDIA only", usd_per_month=bill(sc, g, s) if s.ok else None,
                            feasible=s.ok, note="" if s.ok else "NVIDIA supply cannot serve it",
                            drops=one_drops))
    best: tuple[float, str] | None = None
    for accel, (g, s) in zip(accels, results, strict=True):
        if s.ok:
            cost = bill(sc, g, s)
            if best is None or cost < best[0]:
                best = (cost, accel)
    out.append(Baseline(name=f"best single chip type ({best[1]})" if best else
                        "best single chip type", usd_per_month=best[0] if best else None,
                        feasible=best is not None,
                        note="" if best else "no single chip type can serve every tier",
                        drops=one_drops))
    del total
    return out


def _risk(sc: Scenario, cs: CandidateSet, chosen: list[tuple[Candidate, int]],
          f: Formulation, x: np.ndarray, confidence: float | None) -> Risk:
    """Chance each tier's pools cover their planned peak load, one model error per chip
    family (:func:`tokenfleet.plan.risk.shortfall_odds`)."""
    loads: dict[str, float] = {}
    bands: dict[str, float] = {}
    family: dict[str, str] = {}
    for c, reps in chosen:
        margin = risk_factor(sc, c.uncertainty)  # what the plan took off the point rate
        used = sum(float(x[f.x[(c.id, d.bucket)]]) / (c.capacity[d.bucket] / margin)
                   for d in cs.demands if d.tier == c.tier and (c.id, d.bucket) in f.x)
        loads[c.id] = used / reps
        bands[c.id] = c.uncertainty
        family[c.id] = c.accelerator.family or c.accelerator.id
    tiers, pools = {}, {}
    for t in sc.tiers:
        mine = [c.id for c, _ in chosen if c.tier == t.name]
        p, per = shortfall_odds({k: loads[k] for k in mine}, bands, family)
        tiers[t.name] = p
        pools.update(per)
    ranked = sorted(pools.items(), key=lambda kv: -kv[1])
    return Risk(confidence=confidence, tiers=tiers,
                pools=[PoolRisk(pool=k, band=bands[k], shortfall_probability=v)
                       for k, v in ranked if v > 0])


def _assemble(sc: Scenario, cs: CandidateSet, f: Formulation, sol: Solution, name: str,
              constraints: list[ConstraintReport], baselines: list[Baseline],
              catalog: Catalog) -> Plan:
    assert sol.x is not None
    x = sol.x
    chosen = chosen_units(f, sol)
    units = []
    for c, reps in chosen:
        units.append(c.plan_unit(reps, sc.supply[c.supply_index].prepaid))
    splits = []
    tokens_by_vendor: dict[str, float] = defaultdict(float)
    tier_tokens: dict[str, float] = defaultdict(float)
    for d in cs.demands:
        served = {c.id: float(x[f.x[(c.id, d.bucket)]]) for c, _ in chosen
                  if c.tier == d.tier and (c.id, d.bucket) in f.x and served_by(c)}
        tot = sum(served.values())
        shares = {k: v / tot for k, v in served.items() if v > 1e-9 * max(tot, 1)}
        splits.append(BucketSplit(tier=d.tier, bucket=d.bucket, input_len=d.input_len,
                                  output_len=d.output_len,
                                  peak_requests_per_s=d.rate_per_s * (1 + sc.headroom),
                                  shares=shares))
        for c, _ in chosen:
            v = served.get(c.id, 0.0)
            tokens_by_vendor[c.vendor] += v * d.output_len * d.traffic_per_need(sc.headroom)
        tier_tokens[d.tier] += d.rate_per_s * d.output_len
    all_tokens = sum(tokens_by_vendor.values()) or 1.0

    cost = cost_breakdown(sc, chosen)
    prefix = at_fleet(cs, chosen, catalog)  # counted at the KV this plan buys

    tiers = []
    for t in sc.tiers:
        spend_h = sum(c.usd_per_hour * reps for c, reps in chosen if c.tier == t.name)
        toks = tier_tokens[t.name]
        tiers.append(TierSummary(
            name=t.name, model=catalog.model(t.model).id, slo_ttft_s=t.slo.ttft_s,
            slo_tpot_s=t.slo.tpot_s, slo_ttft_percentile=float(t.slo.ttft_percentile or 99),
            slo_tpot_percentile=float(t.slo.tpot_percentile or 90),
            peak_requests_per_s=sum(d.rate_per_s for d in cs.demands if d.tier == t.name),
            burst_factor=max((d.burst for d in cs.demands if d.tier == t.name), default=1.0),
            output_tokens_per_s=toks,
            usd_per_million_output_tokens=spend_h / 3600 / toks * 1e6 if toks else 0.0,
            precisions=sorted({c.precision for c, _ in chosen if c.tier == t.name}),
            precision_notes=cs.precision_notes.get(t.name, []),
            prefix_cache=prefix.get(t.name)))
    power: dict[str, float] = defaultdict(float)
    for c, reps in chosen:
        power[c.region] += c.watts * reps / 1e6
    pol = sc.policy
    limits = PlanLimits(
        hours_per_month=sc.hours_per_month,
        headroom=sc.headroom,
        derate=sc.derate,
        confidence=(None if sc.derate is not None else
                    sc.confidence if sc.confidence is not None else DEFAULT_CONFIDENCE),
        prepaid_usd_per_month=prepaid_monthly_usd(sc),
        max_vendor_share=pol.max_vendor_share,
        vendor_share_basis=pol.vendor_share_basis,
        n_minus_1=(NMinusOneLimit.model_validate(pol.n_minus_1.model_dump())
                   if pol.n_minus_1 else None),
        power_mw={r.name: r.power_mw for r in sc.regions if r.power_mw is not None},
        supply_max_chips={f"{s.accelerator}@{s.cloud}/{s.region}": s.max_chips
                          for s in sc.supply},
        contracts={k.name: ContractLimit.of(k.terms) for k in sc.contracts},
        residency={t.name: t.regions for t in sc.tiers if t.regions},
    )
    risk = _risk(sc, cs, chosen, f, x, None if sc.derate is not None else (
        sc.confidence if sc.confidence is not None else DEFAULT_CONFIDENCE))
    return Plan(
        risk=risk,
        scenario=name, created=datetime.now(UTC).isoformat(timespec="seconds"),
        objective=sc.objective, tiers=tiers, units=units, traffic_split=splits,
        buckets=SizeBuckets(input_edges=tuple(sc.buckets.input_edges),
                            output_edges=tuple(sc.buckets.output_edges)),
        cost=cost,
        vendor_share={v: tok / all_tokens for v, tok in sorted(tokens_by_vendor.items())
                      if tok > 0},
        power_mw=dict(sorted(power.items())), limits=limits, baselines=baselines,
        constraints=constraints,
        solver=SolverInfo(name="HiGHS (highspy)", status=sol.message, mip_gap=sol.gap,
                          seconds=round(sol.seconds, 3), rounds=sol.rounds,
                          candidates=len(cs.candidates), variables=len(f.program.cost),
                          rows=len(f.program.rows)),
    )
