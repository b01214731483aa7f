"""`tokenfleet catalog ...`: list and show what the bundled (and user) catalogs hold.

The catalog loader (pydantic, YAML) is imported inside the commands, not here, so that
``tokenfleet catalog --help`` stays fast."""

from __future__ import annotations

import json
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tokenfleet.cli.app import FastHelpGroup
from tokenfleet.cli.terminal import console
from tokenfleet.errors import TokenfleetError

if TYPE_CHECKING:
    from pydantic import BaseModel

catalog_app = typer.Typer(
    cls=FastHelpGroup,
    help="What the catalogs hold: accelerators (specs, prices, sources) and models.",
    no_args_is_help=True,
)

CatalogOpt = Annotated[
    list[str] | None,
    typer.Option("--catalog", help="extra catalog YAML to merge (repeatable); see README"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


class Kind(str, Enum):
    accelerators = "accelerators"
    models = "models"


def _fmt(v: float | None, spec: str = "g") -> str:
    return "—" if v is None else format(v, spec)


@catalog_app.command("list")
def list_(
    kind: Annotated[Kind, typer.Argument(help="accelerators or models")],
    catalog: CatalogOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List catalog entries. Figures marked * are assumptions (no public
    source).
    """
    from tokenfleet.catalog.loader import load_catalog
    from tokenfleet.perf.architecture import param_counts

    cat = load_catalog(catalog or [])
    out = console()
    if kind is Kind.accelerators:
        if json_out:
            print(json.dumps([a.model_dump() for a in cat.accelerators], indent=1))
            return
        t = Table(title="Accelerators (per chip; dense peaks)")
        for col in ("id", "vendor", "BF16 TF", "FP8 TF", "FP4 TF", "HBM GB", "TB/s",
                    "link GB/s", "domain", "W", "$/h", "family"):
            t.add_column(col, justify="right" if col not in ("id", "vendor", "family") else "left")
        for a in cat.accelerators:
            p = a.price()
            price = f"{p.usd_per_hour:.2f}{'*' if p.assumption else ''}" if p else "—"
            t.add_row(a.id, a.vendor, _fmt(a.bf16_tflops), _fmt(a.fp8_tflops),
                      _fmt(a.fp4_tflops), _fmt(a.hbm_gb), _fmt(a.hbm_tbps),
                      f"{a.scaleup_gbps:g}{'*' if 'scaleup_gbps' in a.assumptions else ''}",
                      str(a.scaleup_domain),
                      f"{a.tdp_w:g}{'*' if 'tdp_w' in a.assumptions else ''}", price, a.family)
        out.print(t)
        out.print("* assumption: no public figure; see `tokenfleet catalog show ID`")
        return
    if json_out:
        print(json.dumps([m.model_dump() for m in cat.models], indent=1))
        return
    t = Table(title="Models")
    for col in ("id", "params B", "active B", "layers", "hidden", "heads/kv", "attention",
                "experts"):
        t.add_column(col, justify="left" if col in ("id", "attention") else "right")
    for m in cat.models:
        pc = param_counts(m)
        attn = "MLA" if m.is_mla else ("MHA" if m.num_kv_heads == m.num_attention_heads
                                        else "GQA")
        if "sliding" in m.attention_pattern:
            attn += f"+SWA{m.sliding_window}"
        experts = f"{m.experts_per_token}/{m.num_experts}" if m.is_moe else "—"
        t.add_row(m.id, f"{pc.total / 1e9:.1f}", f"{pc.active / 1e9:.1f}", str(m.num_layers),
                  str(m.hidden_size), f"{m.num_attention_heads}/{m.num_kv_heads}", attn, experts)
    out.print(t)


@catalog_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="accelerator or model id / alias")],
    catalog: CatalogOpt = None,
) -> None:
    """Every field of one accelerator or model, with its sources and
    assumptions.
    """
    from tokenfleet.catalog.loader import load_catalog

    cat = load_catalog(catalog or [])
    rec: BaseModel
    try:
        rec = cat.accelerator(name)
    except TokenfleetError as not_chip:
        try:
            rec = cat.model(name)
        except TokenfleetError as not_model:
            raise TokenfleetError(f"{not_chip}\n{not_model}") from None
    print(json.dumps(rec.model_dump(), indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")
