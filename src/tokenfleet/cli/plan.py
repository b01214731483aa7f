"""`tokenfleet plan`: print the plan, write plan.json and the HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tokenfleet.catalog.loader import load_catalog
from tokenfleet.cli.terminal import console
from tokenfleet.errors import TokenfleetError
from tokenfleet.fileio import write_text
from tokenfleet.plan.gates import precision_gate
from tokenfleet.plan.planner import plan_scenario
from tokenfleet.plan.scenario import explain_schema, load_scenario
from tokenfleet.plan.schema import Plan


def _money(x: float | None) -> str:
    return "—" if x is None else f"${x:,.0f}"


def print_plan(plan: Plan, console: Console) -> None:
    c = plan.cost
    console.print(f"[bold]Plan for {plan.scenario}[/bold] — objective: {plan.objective}; "
                  f"solver {plan.solver['status']} in {plan.solver['seconds']:.2f} s "
                  f"(gap {plan.solver['mip_gap']:.2g})")
    console.print(f"  monthly bill {_money(c.usd_per_month)} = committed "
                  f"{_money(c.committed_usd_per_month)} "
                  f"(used {_money(c.committed_used_usd_per_month)})"
                  f" + on-demand {_money(c.on_demand_usd_per_month)}; fleet at list "
                  f"{_money(c.fleet_usd_per_month)}")
    t = Table(title="Pools")
    for col in ("tier", "chip", "cloud/region", "prec", "layout", "replicas", "chips",
                "$/month", "kW", "trust"):
        t.add_column(col, justify="right" if col in ("replicas", "chips", "$/month", "kW")
                     else "left", overflow="fold")
    for u in sorted(plan.units, key=lambda u: (u.tier, -u.usd_per_hour)):
        lay = " ".join(f"{k}{v}" for k, v in u.layout.items() if v > 1) or "tp1"
        t.add_row(u.tier, u.accelerator, f"{u.cloud}/{u.region}", u.precision, lay,
                  str(u.replicas), str(u.chips), _money(u.usd_per_hour * 730),
                  f"{u.watts / 1e3:,.0f}", f"{u.provenance} ±{u.uncertainty:.0%}")
    console.print(t)
    t = Table(title="Tiers")
    for col in ("tier", "model", "peak req/s", "out tok/s", "$/M out tok", "precisions"):
        t.add_column(col)
    for tier in plan.tiers:
        t.add_row(tier.name, tier.model, f"{tier.peak_requests_per_s:,.1f}",
                  f"{tier.output_tokens_per_s:,.0f}", f"{tier.usd_per_million_output_tokens:.3f}",
                  ", ".join(tier.precisions))
    console.print(t)
    for tier in plan.tiers:
        for n in tier.precision_notes:
            console.print(f"  {tier.name}: {n}")
    shares = ", ".join(f"{v} {s:.0%}" for v, s in plan.vendor_share.items())
    power = ", ".join(f"{r} {mw:.2f} MW" for r, mw in plan.power_mw.items())
    console.print(f"  vendor share (output tokens at peak): {shares}")
    console.print(f"  power at TDP: {power}")
    t = Table(title="Constraints")
    for col in ("constraint", "binding", "saves if dropped, $/month", "detail"):
        t.add_column(col, overflow="fold")
    for r in plan.constraints:
        t.add_row(r.name, "yes" if r.binding else "", _money(r.marginal_usd_per_month),
                  r.detail)
    console.print(t)
    for n in plan.notes:
        console.print(f"  note: {n}")
    if plan.baselines:
        t = Table(title="Side by side")
        for col in ("fleet", "$/month", "vs plan"):
            t.add_column(col)
        t.add_row("this plan", _money(c.usd_per_month), "")
        for b in plan.baselines:
            rel = (f"{b.usd_per_month / c.usd_per_month - 1:+.1%}"
                   if b.usd_per_month and c.usd_per_month else b.note)
            t.add_row(b.name, _money(b.usd_per_month), rel)
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
    if explain_schema_:
        print(explain_schema())
        return
    if scenario is None:
        raise TokenfleetError("give a scenario file, e.g. examples/frontier-lab.yaml "
                              "(or --explain-schema)")
    sc, base = load_scenario(scenario, set_ or [])
    cat = load_catalog(catalog or [])
    gate = precision_gate(sc, base, str(scenario))
    err = console(stderr=True)
    with Progress(console=err, transient=True) as prog:
        task = prog.add_task("planning", total=None)

        def step(label: str, i: int, n: int) -> None:
            prog.update(task, description=label, completed=i, total=n)

        plan = plan_scenario(sc, base, name=sc.name, catalog=cat, precision_gate=gate,
                             progress=step, compare_policies=baselines)
    write_text(out, plan.model_dump_json(indent=2))
    html_path = None
    if report is None or str(report) != "-":
        from tokenfleet.report.plan_html import write_plan_report

        html_path = report or out.with_suffix(".html")
        write_plan_report(plan, html_path)
    if json_out:
        print(plan.model_dump_json(indent=2))
        return
    print_plan(plan, console())
    err.print(f"wrote {out}" + (f" and {html_path}" if html_path else ""))


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
