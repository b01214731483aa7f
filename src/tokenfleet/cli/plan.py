"""`tokenfleet plan`: print the plan, write plan.json and the HTML report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from tokenfleet.cli.terminal import console
from tokenfleet.errors import TokenfleetError

if TYPE_CHECKING:
    from tokenfleet.catalog.loader import Catalog
    from tokenfleet.plan.candidates import CandidateSet
    from tokenfleet.plan.scenario import Scenario, Tier
    from tokenfleet.plan.schema import Plan, TierPrefixCache
    from tokenfleet.sim.verify import VerifyOptions

    Gate = Callable[[Tier, str], tuple[bool, str]] | None


def _money(x: float | None) -> str:
    return "—" if x is None else f"${x + 0.0 if abs(x) >= 0.5 else 0.0:,.0f}"


def _print_shares_power_contracts(plan: Plan, console: Console) -> None:
    shares = ", ".join(f"{v} {s:.0%}" for v, s in plan.vendor_share.items())
    power = ", ".join(f"{r} {mw:.2f} MW" for r, mw in plan.power_mw.items())
    console.print(f"  vendor share (output tokens at peak): {shares}")
    if plan.economics:
        console.print("  vendor share by spend / chips / tokens: " + "; ".join(
            f"{v} {s.spend:.0%} / {s.chips:.0%} / {s.tokens:.0%}"
            for v, s in plan.economics.vendor_share.items()))
    console.print(f"  power at TDP: {power}")
    if plan.energy:
        e = plan.energy
        cost = (f", {_money(e['usd_per_month'])}/month" if e.get("usd_per_month") is not None
                else "")
        console.print(f"  energy: {e['mwh_per_month']:,.0f} MWh/month at "
                      f"{e['facility_mw']:.3g} MW facility power (PUE per region){cost}")
    for k in plan.contracts:
        ramp = (" ramp " + "/".join(f"{y / 1e6:g}M" for y in k["yearly_minimum_usd"])
                + f" a year, year {k['year']}" if k.get("yearly_minimum_usd") else "")
        console.print(f"  contract {k['name']} ({k['cloud']}): {_money(k['total_usd'])} over "
                      f"{k['term_months']} months{ramp}; this month's minimum "
                      f"{_money(k['minimum_usd_per_month'])}, used {k['used_fraction']:.0%}")


def _print_constraints(plan: Plan, console: Console) -> None:
    t = Table(title="Constraints")
    for col in ("constraint", "binding", "saves if dropped, $/month", "per unit more",
                "detail"):
        t.add_column(col, overflow="fold")
    for r in plan.constraints:
        price = _money(r.marginal_usd_per_month)
        if not r.price_proved and r.price_low_usd_per_month is not None:
            price = f"≥ {_money(r.price_low_usd_per_month)}"
        per = (f"{_money(r.per_unit_usd_per_month)}/{r.unit}"
               if r.per_unit_usd_per_month is not None and r.unit else "")
        t.add_row(r.name, "yes" if r.binding else "", price, per, r.detail)
    console.print(t)


def print_plan(plan: Plan, console: Console) -> None:
    c = plan.cost
    console.print(f"[bold]Plan for {plan.scenario}[/bold] — objective: {plan.objective}; "
                  f"solver {plan.solver.status} in {plan.solver.seconds or 0.0:.2f} s "
                  f"(gap {plan.solver.mip_gap or 0.0:.2g})")
    console.print(f"  monthly bill {_money(c.usd_per_month)} = committed "
                  f"{_money(c.committed_usd_per_month)} "
                  f"(used {_money(c.committed_used_usd_per_month)})"
                  f" + on-demand {_money(c.on_demand_usd_per_month)}; fleet at list "
                  f"{_money(c.fleet_usd_per_month)}")
    roles = plan.economics.pool_roles if plan.economics else {}
    t = Table(title="Pools (standby: held for N-1, no traffic at peak)")
    for col in ("tier", "chip", "cloud/region", "prec", "layout", "replicas", "chips",
                "$/month", "kW", "trust", "role"):
        t.add_column(col, justify="right" if col in ("replicas", "chips", "$/month", "kW")
                     else "left", overflow="fold")
    for u in sorted(plan.units, key=lambda u: (u.tier, -u.usd_per_hour)):
        lay = u.layout.short
        t.add_row(u.tier, u.accelerator, f"{u.cloud}/{u.region}", u.precision, lay,
                  str(u.replicas), str(u.chips), _money(u.usd_per_hour * 730),
                  f"{u.watts / 1e3:,.0f}", f"{u.provenance} ±{u.uncertainty:.0%}",
                  roles.get(u.pool, "") + ("" if u.role == "both" else f" {u.role}")
                  + (f" spec {u.speculative}" if u.speculative else ""))
    console.print(t)
    _print_tiers(plan, console)
    for tier in plan.tiers:
        for n in tier.precision_notes:
            console.print(f"  {tier.name}: {n}")
        if tier.prefix_cache is not None:
            console.print(f"  {tier.name}: {prefix_cache_line(tier.prefix_cache)}")
        if tier.disaggregation:
            console.print(f"  {tier.name}: disaggregated prefill/decode: {tier.disaggregation}")
        if tier.speculative:
            console.print(f"  {tier.name}: speculative decoding: {tier.speculative}")
    _print_shares_power_contracts(plan, console)
    _print_constraints(plan, console)
    for n in plan.notes:
        console.print(f"  note: {n}")
    if plan.risk is not None:
        print_risk(plan, console)
    if plan.verification is not None:
        print_verification(plan, console)
    if plan.baselines:
        t = Table(title="Side by side")
        for col in ("fleet", "$/month", "vs plan", "solved without"):
            t.add_column(col)
        t.add_row("this plan", _money(c.usd_per_month), "", "")
        for b in plan.baselines:
            rel = (f"{b.usd_per_month / c.usd_per_month - 1:+.1%}"
                   if b.usd_per_month and c.usd_per_month else b.note)
            t.add_row(b.name, _money(b.usd_per_month), rel, ", ".join(b.drops) or "—")
        console.print(t)


def print_risk(plan: Plan, console: Console) -> None:
    risk = plan.risk
    assert risk is not None
    conf = f"each pool at {risk.confidence:.0%} confidence; " if risk.confidence else ""
    console.print(f"  risk: {conf}chance every pool of a tier covers its peak load: "
                  + ", ".join(f"{t} {p:.1%}" for t, p in risk.tiers.items()))
    if risk.pools:
        console.print("  risk carried by: " + ", ".join(
            f"{p.pool} ({p.shortfall_probability:.1%} short, ±{p.band:.0%})"
            for p in risk.pools[:4]))


def _share(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def print_verification(plan: Plan, console: Console) -> None:
    """What the simulator measured on the plan's own traffic, per tier and outage."""
    v = plan.verification
    assert v is not None
    t = Table(title=f"Verified by simulation: first {v.window_s:g} s of each tier's traffic "
                    f"({v.rounds} rounds, {v.seconds:.0f} s): "
                    + ("every SLO met" if v.met else "NOT MET"))
    for col in ("tier", "requests", "TTFT at pct / SLO", "within TTFT", "TPOT at pct / SLO",
                "within TPOT"):
        t.add_column(col, justify="left" if col == "tier" else "right")
    slo = {x.name: x for x in plan.tiers}
    for c in v.tiers:
        s = slo[c.tier]
        t.add_row(c.tier, f"{c.requests:,}",
                  f"p{s.slo_ttft_percentile:g} {_sec(c.ttft_s)} / {_sec(s.slo_ttft_s)}",
                  _share(c.ttft_attainment),
                  f"p{s.slo_tpot_percentile:g} {_sec(c.tpot_s)} / {_sec(s.slo_tpot_s)}",
                  _share(c.tpot_attainment))
    console.print(t)
    if v.outages:
        o = Table(title=f"N-1: first {v.outage_window_s:g} s with each group down, shedding "
                        "like the gateway: share of arrived requests within both SLOs")
        o.add_column("down")
        for c in v.tiers:
            o.add_column(c.tier, justify="right")
        o.add_column("promise", justify="right")
        o.add_column("window $", justify="right")
        for out in v.outages:
            got = {c.tier: c for c in out.tiers}
            o.add_row(out.down, *[_share(got[c.tier].attainment) + ("" if got[c.tier].met
                                                                    else " ✗")
                                  if c.tier in got else "—" for c in v.tiers],
                      f"≥ {out.tiers[0].target:.0%}" if out.tiers else "—", f"{out.usd:,.2f}")
        console.print(o)
    for n in v.notes:
        console.print(f"  verification: {n}")
    for cmd in v.reproduce:
        console.print(f"  reproduce: {cmd}")


def _sec(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g} s"


def _usd(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None else "$" + format(x, spec)


def prefix_cache_line(pc: TierPrefixCache) -> str:
    """One line on a tier's prefix caching: the hit rate, how it was found, the saving."""
    return (f"prefix caching on, priced at a {pc.hit_rate:.1%} hit rate (exact offline count "
            f"of its trace at the KV of the previous solve's fleet; "
            f"{pc.hit_rate_at_plan_kv:.1%} at the {pc.cache_tokens / 1e6:,.1f}M KV tokens "
            f"this plan looks prompts up in, {pc.unbounded_hit_rate:.1%} with no eviction): "
            f"the tier costs "
            f"{_money(pc.usd_per_month)}/month instead of {_money(pc.plain_usd_per_month)}, "
            f"saving {_money(pc.saving_usd_per_month)}; the plan's bill drops by "
            f"{_money(pc.bill_saving_usd_per_month)}"
            + (" (committed spend is paid either way)"
               if pc.bill_saving_usd_per_month < pc.saving_usd_per_month - 1 else ""))


def _print_tiers(plan: Plan, console: Console) -> None:
    econ = {t.tier: t for t in plan.economics.tiers} if plan.economics else {}
    t = Table(title="Tiers (unit costs at peak demand, list prices)")
    for col in ("tier", "model", "peak req/s", "sized for", "out tok/s", "$/M in", "$/M out",
                "$/M blend", "$/1k req", "Mtok/$", "precisions"):
        t.add_column(col, overflow="fold")
    h = plan.limits.headroom
    for tier in plan.tiers:
        e = econ.get(tier.name)
        sized = (f"{tier.burst_factor:.2f}x peak (bursts)" if tier.burst_factor > 1 + h
                 else f"{1 + h:.2f}x peak")
        t.add_row(tier.name, tier.model, f"{tier.peak_requests_per_s:,.1f}", sized,
                  f"{tier.output_tokens_per_s:,.0f}",
                  _usd(e.usd_per_million_input_tokens if e else None),
                  _usd(e.usd_per_million_output_tokens if e else
                       tier.usd_per_million_output_tokens),
                  _usd(e.usd_per_million_tokens if e else None),
                  _usd(e.usd_per_request * 1e3 if e and e.usd_per_request else None),
                  f"{e.tokens_per_usd / 1e6:,.2f}" if e and e.tokens_per_usd else "—",
                  ", ".join(tier.precisions))
    console.print(t)


def plan_cmd(
    scenario: Annotated[Path | None, typer.Argument(help="scenario YAML")] = None,
    out: Annotated[Path, typer.Option(help="where to write plan.json")] = Path("plan.json"),
    report: Annotated[Path | None, typer.Option(
        help="HTML report path (default: next to plan.json as plan.html; '-' to skip)")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="override a scenario field, e.g. supply.maia-200.price=4.5 or "
                      "policy.max_vendor_share=0.4 (repeatable)")] = None,
    baselines: Annotated[bool, typer.Option(
        help="also solve the baselines and price each constraint (a few more solves)")] = True,
    catalog: Annotated[list[str] | None, typer.Option(
        "--catalog", help="extra catalog YAML to merge (repeatable)")] = None,
    explain_schema_: Annotated[bool, typer.Option(
        "--explain-schema", help="print every scenario field and exit")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print plan JSON on stdout")] = False,
    verify_: Annotated[bool, typer.Option(
        "--verify/--no-verify",
        help="replay each tier's traffic through the simulator (every vendor up, and each "
             "down when N-1 is on) and re-size the pools that miss their SLO percentile; "
             "--no-verify gives the model's answer in a few seconds")] = True,
    verify_window: Annotated[float, typer.Option(
        help="seconds of each tier's traffic replayed with everything up")] = 900.0,
    outage_window: Annotated[float, typer.Option(
        help="seconds replayed with each N-1 group down")] = 120.0,
    without: Annotated[list[str] | None, typer.Option(
        "--without", help="plan with no chips of this accelerator, vendor or cloud and "
                          "compare with the scenario as given (repeatable)")] = None,
    require: Annotated[list[str] | None, typer.Option(
        "--require", help="a floor on a vendor's share of a tier's output tokens, e.g. "
                          "'large: Microsoft >= 0.3' (repeatable); compared as --without")] = None,
    versus: Annotated[Path | None, typer.Option(
        "--versus", help="another scenario YAML or plan.json: print both plans side by side "
                         "with the saving and its band")] = None,
    budget: Annotated[float | None, typer.Option(
        "--budget", help="USD per month: plan the largest traffic (a multiple of the "
                         "scenario's) served at every SLO within this bill")] = None,
    power_mw: Annotated[float | None, typer.Option(
        "--power-mw", help="MW over all regions: plan the largest traffic served within "
                           "this power (facility power, PUE included)")] = None,
    band: Annotated[bool, typer.Option(
        help="with a comparison, re-solve both sides at the ends of the estimates' "
             "uncertainty bands for a band on the saving")] = True,
    over_day: Annotated[bool, typer.Option(
        "--over-day", help="also plan the day: a reserved/committed base plus on-demand "
                           "and spot capacity per hour over each tier's traffic.day_profile "
                           "(default: the bundled 'weekday' assumption), one integer program "
                           "over the hours; each pool holds its load with its spot layer's "
                           "expected reclaims rounded up (at least one replica) gone; "
                           "then simulate the peak, trough and most-exposed hours with "
                           "spot reclaims (plan.json 'day')")] = False,
    day_window: Annotated[float, typer.Option(
        help="--over-day: seconds of traffic replayed per simulated hour")] = 300.0,
    day_seed: Annotated[int, typer.Option(
        help="--over-day: seed of the simulated day's spot reclaims and resampling")] = 0,
    day_time_limit: Annotated[float, typer.Option(
        help="--over-day: seconds for the day program (it reports its gap)")] = 20.0,
    day_spot_loss: Annotated[str, typer.Option(
        help="--over-day: simulated spot reclaims: 'expected' (each pool's expected share, "
             "rounded at random) or 'covered' (what the plan covers: at least one replica "
             "of every spot pool, down all window)")] = "expected",
) -> None:
    """The cheapest multi-vendor fleet that meets every SLO and policy.

    Reads a scenario (tiers with traffic and SLOs; supply by chip, cloud and
    region; power caps; committed spend; vendor-share cap and N-1
    resilience), builds candidate pools from the performance model, and
    solves a mixed-integer program with HiGHS. Writes plan.json (input of
    `simulate` and `serve`) and an HTML report.

    Example: tokenfleet plan examples/frontier-lab.yaml --set
    supply.maia-200.price=4
    """
    # Imported here, not at the top: the planner pulls in scipy, numba and polars, and
    # `tokenfleet plan --help` must not wait for them.
    from tokenfleet.catalog.loader import load_catalog
    from tokenfleet.cli import plan_whatif as whatif
    from tokenfleet.cli.progress import progress
    from tokenfleet.plan.economics import plan_economics
    from tokenfleet.plan.gates import precision_gate
    from tokenfleet.plan.planner import plan_scenario
    from tokenfleet.plan.scenario import explain_schema, load_scenario
    from tokenfleet.sim.verify import VerifyOptions

    if explain_schema_:
        print(explain_schema())
        return
    if day_spot_loss not in ("expected", "covered"):
        raise TokenfleetError(f"--day-spot-loss {day_spot_loss!r}: allowed: expected, covered")
    if scenario is None:
        raise TokenfleetError("give a scenario file, e.g. examples/frontier-lab.yaml "
                              "(or --explain-schema)")
    sc, base = load_scenario(scenario, set_ or [])
    cat = load_catalog(catalog or [])
    w = whatif.apply(sc, base, cat, without or [], require or [], budget, power_mw)
    sc = w.sc
    gate = precision_gate(sc, base, str(scenario))
    err = console(stderr=True)
    with progress("planning") as tick:

        def step(label: str, i: int, n: int) -> None:
            tick(i, n, label)

        kept: dict = {}
        if verify_:
            plan = _verified(sc, base, cat, gate, step, baselines, str(scenario),
                             VerifyOptions(window_s=verify_window,
                                           outage_window_s=outage_window,
                                           overrides=tuple(set_ or [])), kept)
        elif over_day:  # plan_scenario's two steps, keeping the candidates for the day
            from tokenfleet.plan.planner import prepare, solve_plan

            kept["cs"] = prepare(sc, base, cat, None, gate, step)
            plan = solve_plan(sc, kept["cs"], sc.name, cat, progress=step,
                              compare_policies=baselines, price_policies=True)
        else:
            plan = plan_scenario(sc, base, name=sc.name, catalog=cat, precision_gate=gate,
                                 progress=step, compare_policies=baselines,
                                 price_policies=True)
        if over_day:
            from tokenfleet.cli.plan_day import add_day

            tick(0, 0, "planning the day")
            plan = add_day(plan, sc, kept["cs"], base, cat, str(scenario), day_window,
                           day_seed, day_time_limit, day_spot_loss)
        tick(0, 0, "planning the other side")
        cmp = whatif.comparison(plan, w, base, cat, versus, band)
    plan = plan.model_copy(update={"economics": plan_economics(plan)})
    whatif.record(plan, w, cmp)
    plan.source = whatif.source(scenario, set_ or [], without or [], require or [], budget,
                                power_mw)
    from tokenfleet.fileio import write_text

    write_text(out, plan.model_dump_json(indent=2))
    html_path = None
    if report is None or str(report) != "-":
        from tokenfleet.report.plan_html import write_plan_report

        html_path = report or out.with_suffix(".html")
        write_plan_report(plan, html_path)
    if json_out:
        print(plan.model_dump_json(indent=2))
        return
    out_console = console()
    print_plan(plan, out_console)
    if w.scale is not None:
        whatif.print_scale(w.scale, out_console)
    if cmp is not None:
        whatif.print_comparison(cmp, out_console)
    if plan.day is not None:
        from tokenfleet.cli.plan_day import print_day

        print_day(plan.day, out_console)
    err.print(f"wrote {out}" + (f" and {html_path}" if html_path else ""))


def _verified(sc: Scenario, base: Path, cat: Catalog, gate: Gate,
              step: Callable[[str, int, int], None], baselines: bool, scenario: str,
              opts: VerifyOptions, kept: dict | None = None) -> Plan:
    """Plan, verify by simulation (re-sizing and re-solving), then price the constraints
    and solve the baselines once, on the capacities the simulation settled on; a binding
    cap is then priced by planning without it the same way (:func:`_replanned_caps`)."""
    from tokenfleet.plan.planner import solve_plan
    from tokenfleet.plan.prices import rebased

    cs, plan = _plan_and_verify(sc, base, cat, gate, step, scenario, opts)
    if kept is not None:
        kept["cs"] = cs  # --over-day plans the day over the same candidates
    v = plan.verification
    assert v is not None
    # prices (and baselines) on the capacities the simulation settled on, so a price
    # is this plan's bill minus the bill re-solved without the constraint
    final = solve_plan(sc, cs, sc.name, cat, scale=v.resized, progress=step,
                       compare_policies=baselines, price_policies=True)
    same = ({u.pool: u.replicas for u in final.units}
            == {u.pool: u.replicas for u in plan.units})
    if not same:  # the re-solve is deterministic; keep the verified fleet if not
        shift = plan.cost.usd_per_month - final.cost.usd_per_month
        plan.baselines = final.baselines
        plan.constraints = rebased(final.constraints, shift)
        plan.tradeoffs = final.tradeoffs
        plan.notes.append(f"baselines and constraint prices come from a re-solve that "
                          f"picked a different fleet (bill {shift:+,.0f} USD/month from "
                          "this one's; prices moved by that difference)")
    else:
        final.verification = v
        plan = final
    if baselines:
        _replanned_caps(plan, sc, base, cat, gate, step, scenario, opts)
    return plan


def _plan_and_verify(sc: Scenario, base: Path, cat: Catalog, gate: Gate,
                     step: Callable[[str, int, int], None], scenario: str,
                     opts: VerifyOptions) -> tuple[CandidateSet, Plan]:
    """Candidates, and the cheapest plan verified by simulation (no prices yet)."""
    from tokenfleet.plan.planner import prepare, solve_plan
    from tokenfleet.sim.verify import verify

    cs = prepare(sc, base, cat, None, gate, step)

    def solve(scale: dict[str, float]) -> Plan:
        return solve_plan(sc, cs, sc.name, cat, scale=scale, compare_policies=False)

    return cs, verify(solve({}), solve, scenario, opts, step)


def _lifted(sc: Scenario, cap: str) -> Scenario | None:
    """``sc`` without the power or supply cap named ``cap`` (a constraint report's
    name), or None for any other constraint."""
    out = sc.model_copy(deep=True)
    for r in out.regions:
        if cap == f"power {r.name}" and r.power_mw is not None:
            r.power_mw = None
            return out
    hit = [s for s in out.supply if cap == f"supply {s.accelerator}@{s.cloud}/{s.region}"]
    for s in hit:
        s.max_chips = UNCAPPED_CHIPS
    if hit:
        return out
    if cap == "fleet-power" and out.max_power_mw is not None:
        out.max_power_mw = None
        return out
    return None


UNCAPPED_CHIPS = 1_000_000


def _replanned_caps(plan: Plan, sc: Scenario, base: Path, cat: Catalog, gate: Gate,
                    step: Callable[[str, int, int], None], scenario: str,
                    opts: VerifyOptions) -> None:
    """Price each binding power or supply cap as a user measures it: plan the scenario
    without the cap, verified by simulation like this plan, and take the difference of
    the two bills. The re-solve of :mod:`tokenfleet.plan.prices` keeps this plan's
    re-sizing, which belongs to the pools the cap forced; the fleet without the cap has
    other pools and other re-sizing (a cap that moved a tier to slower chips costs
    what those chips' verified capacity costs). One more plan per binding cap."""
    for i, r in enumerate(plan.constraints):
        lifted = _lifted(sc, r.name) if (r.marginal_usd_per_month or 0) > 0 else None
        if lifted is None:
            continue
        step(f"pricing {r.name}: planning without it", 0, 0)
        _, other = _plan_and_verify(lifted, base, cat, gate, step, scenario, opts)
        saving = plan.cost.usd_per_month - other.cost.usd_per_month
        kept_re = (f"; re-solved on this plan's capacities it saves "
                   f"{r.marginal_usd_per_month:,.0f}")
        plan.constraints[i] = r.model_copy(update={
            "marginal_usd_per_month": max(saving, 0.0),
            "price_low_usd_per_month": None, "price_high_usd_per_month": None,
            "detail": (r.detail + "; " if r.detail else "") + (
                f"priced by planning without it, verified by simulation "
                f"({other.cost.usd_per_month:,.0f} USD/month)" + kept_re)})


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
