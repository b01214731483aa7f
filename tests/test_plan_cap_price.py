"""A binding power cap is priced as a user measures it: the verified plan without the cap,
by the same command, bills the capped plan's cost minus the reported price."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tokenfleet.cli import app

SCENARIO = """
name: cap-price
headroom: 0.0
tiers:
  - name: chat
    model: llama-3.1-8b
    traffic: {rate_per_s: 300, mix: [{input_len: 600, output_len: 120, share: 1.0}]}
    slo: {ttft_s: 0.5, tpot_s: 0.03, ttft_percentile: 99, tpot_percentile: 90}
    precisions: [fp8]
supply:
  - {accelerator: h100-sxm, cloud: runpod, region: r1, max_chips: 64, counts: [1],
     usd_per_chip_hour: 2.0}
  - {accelerator: h100-sxm, cloud: runpod, region: r2, max_chips: 64, counts: [1],
     usd_per_chip_hour: 4.0}
regions:
  - {name: r1, power_mw: 0.0015}   # two H100s at TDP: the cheap region is capped
  - {name: r2}
"""


def _plan(tmp: Path, *extra: str) -> dict:
    r = CliRunner().invoke(app, ["plan", str(tmp / "cap.yaml"), "--verify-window", "60",
                                 "--report", "-", "--out", str(tmp / "p.json"), "--json",
                                 *extra])
    assert r.exit_code == 0, r.output
    return json.loads((tmp / "p.json").read_text())


def test_a_binding_cap_is_priced_by_the_verified_plan_without_it(tmp_path: Path) -> None:
    (tmp_path / "cap.yaml").write_text(SCENARIO)
    capped = _plan(tmp_path)
    free = _plan(tmp_path, "--set", "regions.r1.power_mw=1000")
    row = next(c for c in capped["constraints"] if c["name"] == "power r1")
    diff = capped["cost"]["usd_per_month"] - free["cost"]["usd_per_month"]
    assert diff > 0
    assert row["binding"] and "planning without it" in row["detail"]
    assert abs(row["marginal_usd_per_month"] - diff) <= 0.01 * diff
