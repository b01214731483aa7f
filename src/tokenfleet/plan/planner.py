"""Plan a fleet: candidates -> MILP -> Plan, with baselines, the price of each policy
constraint, and an explanation when the scenario is infeasible."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.calibration import Calibration, load_fit
from tokenfleet.plan.candidates import Candidate, CandidateSet, build_candidates
from tokenfleet.plan.check import check_plan
from tokenfleet.plan.contracts import enrich
from tokenfleet.plan.milp import (
    POLICY_FAMILIES,
    Formulation,
    Solution,
    fixed_monthly_cost,
    solve_fleet,
)
from tokenfleet.plan.prices import price_constraints
from tokenfleet.plan.scenario import Scenario, Tier
from tokenfleet.plan.schema import (
    Baseline,
    BucketCapacity,
    BucketSplit,
    ConstraintReport,
    Cost,
    Plan,
    PlanUnit,
    TierSummary,
)

ACTIVE = 1e-6  # relative slack under which a ≤ row counts as binding


class Infeasible(TokenfleetError):
    """No plan meets every constraint; the message says which ones conflict, by how much."""


def _solve(sc: Scenario, cs: CandidateSet, **kw) -> tuple[Formulation, Solution]:
    return solve_fleet(sc, cs, **kw)


def _solve_many(sc: Scenario, cs: CandidateSet, jobs: list[dict],
                done: Callable[[], None] | None = None) -> list[tuple[Formulation, Solution]]:
    """Independent re-solves (pricing, baselines) in threads: HiGHS releases the GIL
    while it runs, so on the example's 13 re-solves two cores nearly halve the time."""
    workers = min(len(jobs), os.cpu_count() or 1, 4)
    if workers <= 1:
        out = []
        for kw in jobs:
            out.append(_solve(sc, cs, **kw))
            if done:
                done()
        return out
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_solve, sc, cs, **kw) for kw in jobs]
        results = []
        for fut in futures:
            results.append(fut.result())
            if done:
                done()
        return results


def cost_breakdown(sc: Scenario, chosen: list[tuple[Candidate, int]]) -> Cost:
    """The monthly bill of a fleet: commitments and prepaid blocks (paid whatever is
    used) plus spend beyond them: usage a contract covers (at its discount) beyond its
    minimum, and usage no contract covers, at list."""
    hours = sc.hours_per_month
    usage: dict[str, float] = defaultdict(float)  # metered spend per contract
    fleet = on_demand = 0.0
    prepaid_used = 0.0
    for c, reps in chosen:
        spend = c.usd_per_hour * reps * hours
        fleet += spend
        if sc.supply[c.supply_index].prepaid:
            prepaid_used += spend
            continue
        k = sc.contract_for(c.accelerator.id, c.cloud, c.region)
        if k is None:
            on_demand += spend
        else:
            usage[k.name] += spend * (1 - k.discount)
    used = prepaid_used
    for k in sc.contracts:
        on_demand += max(usage[k.name] - k.fixed_usd_per_month, 0.0)
        used += min(usage[k.name], k.fixed_usd_per_month)
    fixed = fixed_monthly_cost(sc)
    return Cost(usd_per_month=fixed + on_demand, fleet_usd_per_month=fleet,
                committed_usd_per_month=fixed, committed_used_usd_per_month=used,
                on_demand_usd_per_month=on_demand)


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
    f, sol = _solve(sc, cs, elastic=True)
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
) -> Plan:
    catalog = catalog or load_catalog()
    cal = cal or load_fit()
    step = (lambda label: (lambda i, n: progress(label, i, n))) if progress else (
        lambda label: None)
    cs = build_candidates(sc, base, catalog, cal, precision_gate, step("candidates"))
    uncovered = [d for d in cs.demands
                 if not any(c.tier == d.tier and d.bucket in c.capacity for c in cs.candidates)]
    if uncovered:
        raise Infeasible(f"scenario '{sc.name}' is infeasible:\n" + explain_infeasible(sc, cs))
    f, sol = _solve(sc, cs)
    if sol.timed_out:
        raise TokenfleetError(f"scenario '{sc.name}': no plan found within time_limit_s="
                              f"{sc.time_limit_s:g} s ({sol.message}); raise time_limit_s or "
                              "mip_gap, or shrink the supply list")
    if not sol.ok:
        raise Infeasible(f"scenario '{sc.name}' is infeasible:\n" + explain_infeasible(sc, cs))
    total = bill(sc, f, sol)

    constraints = (price_constraints(sc, cs, f, sol, total, bill, progress) if compare_policies
                   else _constraint_reports(sc, cs, f, sol, total, False, progress))
    baselines = _baselines(sc, cs, total) if compare_policies else []
    plan = _assemble(sc, cs, f, sol, name, constraints, baselines, catalog)
    enrich(plan, sc)  # contracts as signed, vendor shares by basis, energy (plan.contracts)
    # Verify with code that shares nothing with the MILP (tokenfleet.plan.check).
    violations = check_plan(plan, sc, catalog)
    if violations:
        plan.notes.extend(f"CHECK FAILED {v.check}: {v.detail}" for v in violations)
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
    binding_caps = [r for r, act in rows
                    if r.family != "contract" and act >= r.ub * (1 - ACTIVE) - 1e-9]
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
        marginal = saving(r.name) if binding and price_them else 0.0
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


def _baselines(sc: Scenario, cs: CandidateSet, total: float) -> list[Baseline]:
    """Reference fleets without the policy constraints (vendor cap, N-1)."""
    drop = frozenset(POLICY_FAMILIES)
    nv = [c for c in cs.candidates if c.vendor.upper().startswith("NVIDIA")]
    accels = sorted({c.accelerator.id for c in cs.candidates})
    jobs = [{"drop": drop}] + ([{"candidates": nv, "drop": drop}] if nv else []) + [
        {"candidates": [c for c in cs.candidates if c.accelerator.id == a], "drop": drop}
        for a in accels]
    results = iter(_solve_many(sc, cs, jobs))
    out = []
    g, s = next(results)
    out.append(Baseline(name="cheapest mix, no policy constraints",
                        usd_per_month=bill(sc, g, s) if s.ok else None, feasible=s.ok,
                        note="supply, power and SLOs only"))
    if nv:
        g, s = next(results)
        out.append(Baseline(name="NVIDIA only", usd_per_month=bill(sc, g, s) if s.ok else None,
                            feasible=s.ok, note="" if s.ok else "NVIDIA supply cannot serve it"))
    best: tuple[float, str] | None = None
    for accel, (g, s) in zip(accels, results, strict=True):
        if s.ok:
            cost = bill(sc, g, s)
            if best is None or cost < best[0]:
                best = (cost, accel)
    out.append(Baseline(name=f"best single chip type ({best[1]})" if best else
                        "best single chip type", usd_per_month=best[0] if best else None,
                        feasible=best is not None,
                        note="" if best else "no single chip type can serve every tier"))
    return out


def _assemble(sc: Scenario, cs: CandidateSet, f: Formulation, sol: Solution, name: str,
              constraints: list[ConstraintReport], baselines: list[Baseline],
              catalog: Catalog) -> Plan:
    assert sol.x is not None
    x = sol.x
    chosen = chosen_units(f, sol)
    units = []
    for c, reps in chosen:
        any_est = next(iter(c.estimates.values()))
        units.append(PlanUnit(
            pool=c.id, tier=c.tier, model=any_est.model, accelerator=c.accelerator.id,
            vendor=c.vendor, cloud=c.cloud, region=c.region, precision=c.precision,
            kv_precision=any_est.kv_precision, engine=any_est.engine,
            layout=any_est.layout or {}, chips_per_replica=c.count, replicas=reps,  # one
            # layout per pool: the candidate's estimates all share it
            chips=reps * c.count, price_kind=c.price_kind, usd_per_chip_hour=c.usd_per_chip_hour,
            usd_per_hour=c.usd_per_hour * reps, watts=c.watts * reps,
            capacity=[BucketCapacity(bucket=b, requests_per_s=cap,
                                     requests_per_s_point=e.requests_per_s or 0.0,
                                     output_tokens_per_s=e.output_tokens_per_s or 0.0,
                                     concurrency=e.concurrency or 0.0,
                                     ttft_s=e.ttft_s or 0.0, tpot_s=e.tpot_s or 0.0)
                      for b, cap in c.capacity.items() for e in [c.estimates[b]]],
            provenance=any_est.provenance, uncertainty=c.uncertainty))
    splits = []
    tokens_by_vendor: dict[str, float] = defaultdict(float)
    tier_tokens: dict[str, float] = defaultdict(float)
    for d in cs.demands:
        served = {c.id: float(x[f.x[(c.id, d.bucket)]]) for c, _ in chosen
                  if c.tier == d.tier and (c.id, d.bucket) in f.x}
        tot = sum(served.values())
        shares = {k: v / tot for k, v in served.items() if v > 1e-9 * max(tot, 1)}
        splits.append(BucketSplit(tier=d.tier, bucket=d.bucket, input_len=d.input_len,
                                  output_len=d.output_len,
                                  peak_requests_per_s=d.rate_per_s * (1 + sc.headroom),
                                  shares=shares))
        for c, _ in chosen:
            v = served.get(c.id, 0.0)
            tokens_by_vendor[c.vendor] += v * d.output_len
        tier_tokens[d.tier] += d.rate_per_s * d.output_len
    all_tokens = sum(tokens_by_vendor.values()) or 1.0

    cost = cost_breakdown(sc, chosen)

    tiers = []
    for t in sc.tiers:
        spend_h = sum(c.usd_per_hour * reps for c, reps in chosen if c.tier == t.name)
        toks = tier_tokens[t.name]
        tiers.append(TierSummary(
            name=t.name, model=catalog.model(t.model).id, slo_ttft_s=t.slo.ttft_s,
            slo_tpot_s=t.slo.tpot_s, slo_percentile=t.slo.percentile,
            peak_requests_per_s=sum(d.rate_per_s for d in cs.demands if d.tier == t.name),
            output_tokens_per_s=toks,
            usd_per_million_output_tokens=spend_h / 3600 / toks * 1e6 if toks else 0.0,
            precisions=sorted({c.precision for c, _ in chosen if c.tier == t.name}),
            precision_notes=cs.precision_notes.get(t.name, [])))
    power: dict[str, float] = defaultdict(float)
    for c, reps in chosen:
        power[c.region] += c.watts * reps / 1e6
    pol = sc.policy
    limits = {
        "hours_per_month": sc.hours_per_month,
        "headroom": sc.headroom,
        "derate": sc.derate,
        "max_vendor_share": pol.max_vendor_share,
        "vendor_share_basis": pol.vendor_share_basis,
        "n_minus_1": pol.n_minus_1.model_dump() if pol.n_minus_1 else None,
        "power_mw": {r.name: r.power_mw for r in sc.regions if r.power_mw is not None},
        "supply_max_chips": {f"{s.accelerator}@{s.cloud}/{s.region}": s.max_chips
                             for s in sc.supply},
        "contracts": {k.name: {"cloud": k.cloud,
                               "committed_usd_per_month": k.committed_usd_per_month}
                      for k in sc.contracts},
        "residency": {t.name: t.regions for t in sc.tiers if t.regions},
    }
    return Plan(
        scenario=name, created=datetime.now(UTC).isoformat(timespec="seconds"),
        objective=sc.objective, tiers=tiers, units=units, traffic_split=splits, cost=cost,
        vendor_share={v: tok / all_tokens for v, tok in sorted(tokens_by_vendor.items())
                      if tok > 0},
        power_mw=dict(sorted(power.items())), limits=limits, baselines=baselines,
        constraints=constraints,
        solver={"name": "HiGHS (highspy)", "status": sol.message,
                "mip_gap": sol.gap, "seconds": round(sol.seconds, 3), "rounds": sol.rounds,
                "candidates": len(cs.candidates), "variables": len(f.program.cost),
                "rows": len(f.program.rows)},
    )
