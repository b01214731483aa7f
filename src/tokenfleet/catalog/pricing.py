"""Which price a comparison uses: like for like across chips.

Chips list prices from different clouds and contract kinds (an H100 at a GPU-rental
price next to an H200 at AWS on-demand). ``compare --cloud`` and ``--price-kind`` pick
one cloud and one kind for every chip; without ``--cloud`` each chip gets the median of
its prices of that kind across the clouds that list one, so no chip is priced by its
cheapest or dearest outlier. :func:`priced_catalog` returns a catalog whose chips carry
only that price, labelled with how it was chosen; the estimator reads it unchanged.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from typing import Literal

from tokenfleet.catalog.loader import Catalog, _Registry
from tokenfleet.catalog.schema import Accelerator, Price, PriceKind

PRICE_KINDS: tuple[PriceKind, ...] = ("on_demand", "reserved", "spot")
Basis = Literal["cloud", "median"]


def parse_price_kind(text: str) -> PriceKind:
    """``on-demand`` / ``on_demand`` / ``reserved`` / ``spot``."""
    from tokenfleet.errors import TokenfleetError

    k = text.strip().lower().replace("-", "_")
    if k not in PRICE_KINDS:
        raise TokenfleetError(f"--price-kind '{text}': allowed: on-demand, reserved, spot")
    return k  # type: ignore[return-value]


@dataclass(frozen=True)
class PriceChoice:
    price: Price | None  # None: no price of this kind (in this cloud)
    basis: str  # how it was chosen, for the table's caption


def select_price(accel: Accelerator, cloud: str | None, kind: PriceKind) -> PriceChoice:
    """``cloud``'s price of ``kind``; without a cloud, the median across clouds."""
    prices = [p for p in accel.prices if p.kind == kind]
    if cloud is not None:
        hit = next((p for p in prices if p.cloud == cloud), None)
        return PriceChoice(hit, f"{cloud} {kind}")
    if not prices:
        return PriceChoice(None, f"no {kind} price")
    per_cloud: dict[str, Price] = {}
    for p in prices:  # one price per cloud: the first listed, as the catalog orders them
        per_cloud.setdefault(p.cloud, p)
    if len(per_cloud) == 1:
        p = next(iter(per_cloud.values()))
        return PriceChoice(p, f"{p.cloud} {kind} (only cloud listed)")
    usd = statistics.median(p.usd_per_hour for p in per_cloud.values())
    listed = ", ".join(f"{c} ${p.usd_per_hour:g}" for c, p in sorted(per_cloud.items()))
    median = Price(cloud="median", usd_per_hour=usd, kind=kind,
                   date=max(p.date for p in per_cloud.values()),
                   source=f"median of {len(per_cloud)} clouds' {kind} prices: {listed}",
                   assumption=any(p.assumption for p in per_cloud.values()))
    return PriceChoice(median, f"median of {len(per_cloud)} clouds ({kind})")


def priced_catalog(cat: Catalog, cloud: str | None, kind: PriceKind
                   ) -> tuple[Catalog, dict[str, PriceChoice]]:
    """A copy of ``cat`` in which every chip has one price: the chosen one, listed as the
    chip's first on-demand price (the slot the estimator reads; the kind and how it was
    chosen stay in its ``source``). Chips without such a price keep none."""
    out = copy.copy(cat)
    out.accelerators = _Registry("accelerator")
    choices: dict[str, PriceChoice] = {}
    for a in cat.accelerators:
        ch = select_price(a, cloud, kind)
        choices[a.id] = ch
        prices = [] if ch.price is None else [ch.price.model_copy(update={
            "kind": "on_demand", "cloud": cloud or ch.price.cloud,
            "source": f"[{ch.basis}] {ch.price.source}"})]
        out.accelerators.add(a.model_copy(update={"prices": prices}))
    return out, choices
