"""Quality gates: a tier may run a reduced precision only if a measured quality report
(`tokenfleet validate-precision`) meets the tier's rule. Needs no PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.scenario import PrecisionName, Scenario, Tier

Gate = Callable[[Tier, str], tuple[bool, str]]


def precision_gate(sc: Scenario, base: Path, source: str) -> Gate:
    """A function (tier, precision) -> (allowed, why) for the planner."""
    from tokenfleet.quality.assessment import check_precision, load_report, parse_rule

    cache: dict[tuple[str, str], tuple[bool, str]] = {}

    def gate(tier: Tier, precision: str) -> tuple[bool, str]:
        rule = tier.precision_rules.get(cast(PrecisionName, precision))
        if rule is None:
            return True, ""
        key = (tier.name, precision)
        if key not in cache:
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
            cache[key] = (ok, f"{precision}: {'allowed' if ok else 'forbidden'} — {why}")
        return cache[key]

    return gate
