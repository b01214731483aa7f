"""Catalog sources: the entries reviewed on 2026-12-07 cite vendor documents, cloud price
lists or the SkyPilot catalogs at a commit, each price with a date; none of them leans
on a personal blog, a shop mirror or a reseller page."""

from __future__ import annotations

import pytest

from tokenfleet.catalog import load_catalog

LOW_GRADE = ("lzwjava.github.io", "aiminingco.com", "awesomeagents.ai", "951200.xyz",
             "jiralog.com", "huggingface.co/datasets/600me", "saulelectric.com", "gpu.blog",
             "thundercompute.com/blog", "aiwiki.ai", "grokipedia.com")
REVIEWED = ("a100-80gb", "h100-sxm", "h200")


@pytest.mark.parametrize("chip", REVIEWED)
def test_reviewed_chips_cite_no_low_grade_source(chip: str) -> None:
    a = load_catalog().accelerator(chip)
    spec_urls = [s.url for s in a.sources]
    # AWS Capacity Block rates were read through a mirror of the AWS page: allowed only
    # as the named mirror of the official URL, never as the source itself
    price_srcs = [p.source.split("(mirror read:")[0] for p in a.prices]
    for text in spec_urls + price_srcs:
        assert not any(host in text for host in LOW_GRADE), (chip, text)
    for p in a.prices:
        assert p.date, (chip, p.cloud, p.kind)


def test_skypilot_prices_name_their_commit_and_row() -> None:
    for chip in REVIEWED:
        for p in load_catalog().accelerator(chip).prices:
            if "skypilot-catalog" in p.source:
                assert "/blob/" in p.source and "vms.csv" in p.source, (chip, p.source)
                assert len(p.source.split("/blob/")[1].split("/")[0]) == 40  # a commit
