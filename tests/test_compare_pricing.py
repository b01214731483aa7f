"""compare prices every chip like for like: one cloud and kind, or each chip's median
across clouds; the choice is stated."""

from __future__ import annotations

import statistics

import pytest

from tokenfleet.catalog.loader import load_catalog
from tokenfleet.catalog.pricing import parse_price_kind, priced_catalog, select_price
from tokenfleet.catalog.schema import Price
from tokenfleet.errors import TokenfleetError


def _with_prices(prices: list[Price]):
    return load_catalog().accelerator("h100-sxm").model_copy(update={"prices": prices})


def _p(cloud: str, usd: float, kind: str = "on_demand", assumed: bool = False) -> Price:
    return Price(cloud=cloud, usd_per_hour=usd, kind=kind, date="2026-01", source="test",
                 assumption=assumed)


def test_median_across_clouds_one_price_per_cloud() -> None:
    a = _with_prices([_p("aws", 12.0), _p("runpod", 4.0), _p("gcp", 11.0), _p("aws", 99.0),
                      _p("aws", 5.0, "reserved")])
    ch = select_price(a, None, "on_demand")
    assert ch.price is not None and ch.price.usd_per_hour == statistics.median([12, 4, 11])
    assert ch.basis == "median of 3 clouds (on_demand)"
    assert select_price(a, "aws", "reserved").price.usd_per_hour == 5.0
    assert select_price(a, "azure", "on_demand").price is None


def test_an_assumed_price_in_the_median_marks_it_assumed() -> None:
    a = _with_prices([_p("aws", 12.0), _p("x", 4.0, assumed=True)])
    assert select_price(a, None, "on_demand").price.assumption


def test_priced_catalog_gives_each_chip_the_chosen_price_in_the_estimators_slot() -> None:
    cat, choices = priced_catalog(load_catalog(), "aws", "spot")
    h100 = cat.accelerator("h100-sxm")
    assert h100.price() is not None and h100.price().usd_per_hour == choices[
        "h100-sxm"].price.usd_per_hour
    assert "[aws spot]" in h100.price().source
    assert cat.accelerator("maia-200").prices == []  # no AWS spot price: left unpriced
    assert load_catalog().accelerator("maia-200").prices  # the original is untouched


def test_price_kind_spelling() -> None:
    assert parse_price_kind("on-demand") == "on_demand"
    with pytest.raises(TokenfleetError, match="allowed: on-demand, reserved, spot"):
        parse_price_kind("committed")
