"""Quality gates: a tier may run a precision below bf16 only where a published quality
figure (``catalog/data/quality_deltas.yaml``: model cards and papers, each with its
source) or a measured report (`tokenfleet validate-precision`, named in the tier's
``precision_rules``) shows it within the tier's tolerance. Needs no PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import cast

import yaml

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.scenario import PrecisionName, Scenario, Tier

Gate = Callable[[Tier, str], tuple[bool, str]]
REFERENCE = "bf16"  # what published scores are measured against: always allowed


@dataclass(frozen=True)
class Published:
    model: str
    precision: str
    format: str
    loss: float  # worst relative drop over the published benchmarks; 0 for native formats
    worst: str  # the benchmark that sets it
    source: str


@cache
def published_deltas() -> dict[tuple[str, str], Published]:
    """(model id, precision) -> the published quality figure."""
    text = (resources.files("tokenfleet.catalog") / "data" / "quality_deltas.yaml").read_text()
    out: dict[tuple[str, str], Published] = {}
    for i, e in enumerate(yaml.safe_load(text)):
        where = f"quality_deltas.yaml entry {i} ({e.get('model')}/{e.get('precision')})"
        if not e.get("source"):
            raise TokenfleetError(f"{where}: no source")
        if e.get("native"):
            loss, worst = 0.0, "native format (published scores are in it)"
        else:
            scores = e.get("scores") or {}
            if not scores:
                raise TokenfleetError(f"{where}: give native: true or scores")
            drops = {b: max(1.0 - q / ref, 0.0) for b, (ref, q) in scores.items()}
            worst = max(drops, key=lambda b: drops[b])
            loss = drops[worst]
        out[(e["model"], e["precision"])] = Published(
            e["model"], e["precision"], e.get("format", ""), loss, worst, e["source"])
    return out


def published_gate(tier: Tier, model_id: str, precision: str) -> tuple[bool, str]:
    """Allowed by the published table? (allowed, why)."""
    if precision == REFERENCE:
        return True, ""
    pub = published_deltas().get((model_id, precision))
    tol = tier.quality.max_loss
    if pub is None:
        return False, (f"{precision}: ruled out — no published quality figure for "
                       f"{model_id} at {precision} and no validate-precision report "
                       "(add one under precision_rules)")
    ok = pub.loss <= tol
    verdict = "allowed" if ok else "ruled out"
    return ok, (f"{precision}: {verdict} — {pub.format}: worst published loss "
                f"{pub.loss:.1%} ({pub.worst}) vs tolerance {tol:.1%}; source: {pub.source}")


def precision_gate(sc: Scenario, base: Path, source: str) -> Gate:
    """A function (tier, precision) -> (allowed, why) for the planner: a tier's
    precision_rules report decides where given; otherwise the published table."""
    from tokenfleet.catalog.loader import load_catalog
    from tokenfleet.quality.assessment import check_precision, load_report, parse_rule

    cache_: dict[tuple[str, str], tuple[bool, str]] = {}
    catalog = load_catalog()

    def model_id(tier: Tier) -> str:
        try:
            return catalog.model(tier.model).id
        except TokenfleetError:
            return tier.model

    def gate(tier: Tier, precision: str) -> tuple[bool, str]:
        key = (tier.name, precision)
        if key in cache_:
            return cache_[key]
        rule = tier.precision_rules.get(cast(PrecisionName, precision))
        if rule is None:
            cache_[key] = published_gate(tier, model_id(tier), precision)
            return cache_[key]
        i = sc.tiers.index(tier)
        raw = dict(rule)
        report_path = raw.pop("report", None)
        if not report_path:
            raise TokenfleetError(f"{source}: field 'tiers.{i}.precision_rules.{precision}"
                                  ".report': missing (path to a validate-precision report)")
        path = Path(report_path)
        if not path.is_absolute():
            path = base / path
        try:
            parsed = parse_rule(raw)
        except TokenfleetError as e:
            raise TokenfleetError(
                f"{source}: field 'tiers.{i}.precision_rules.{precision}': {e}") from None
        ok, why = check_precision(load_report(path), precision, parsed)
        cache_[key] = (ok, f"{precision}: {'allowed' if ok else 'forbidden'} — {why}")
        return cache_[key]

    return gate
