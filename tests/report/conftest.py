"""Fixtures for the report tests: a small Plan built from the schema, and a headless
Chromium runner (Debian's ``chromium`` package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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

# Names that would run script if any of them reached the page unescaped. The <img>
# one fires its onerror (file:///…/x does not exist) and marks <body> for the
# browser test to see.
EVIL_SCENARIO = "lab <script>document.body.setAttribute('data-pwned','scenario')</script>"
EVIL_TIER = "chat<img src=x onerror=\"document.body.setAttribute('data-pwned','tier')\">"
SHORT = "in0-512_out0-128"
LONG = "in512-inf_out0-128"
HOURS = 730.0


def cap(bucket: str, rps: float, point: float, out_len: int) -> BucketCapacity:
    return BucketCapacity(bucket=bucket, requests_per_s=rps, requests_per_s_point=point,
                          output_tokens_per_s=point * out_len, concurrency=32.0, ttft_s=0.2,
                          tpot_s=0.02)


def unit(pool: str, tier: str, accelerator: str, vendor: str, cloud: str, region: str,
         replicas: int, chips_per_replica: int, usd_per_chip_hour: float, watts_per_chip: float,
         caps: list[BucketCapacity], provenance: str = "calibrated",
         uncertainty: float = 0.1) -> PlanUnit:
    chips = replicas * chips_per_replica
    return PlanUnit(pool=pool, tier=tier, model="llama-3.1-8b", accelerator=accelerator,
                    vendor=vendor, cloud=cloud, region=region, precision="fp8",
                    kv_precision="fp8", engine=None, layout={"tp": chips_per_replica},
                    chips_per_replica=chips_per_replica, replicas=replicas, chips=chips,
                    price_kind="on_demand", usd_per_chip_hour=usd_per_chip_hour,
                    usd_per_hour=usd_per_chip_hour * chips, watts=watts_per_chip * chips,
                    capacity=caps, provenance=provenance, uncertainty=uncertainty)


def small_plan() -> Plan:
    """Two tiers, four pools in three clouds and two regions, one contract.

    Numbers by hand. Loads at peak (share x peak / derated capacity / replicas):
    A: (0.6*10/5 + 0.75*2/1) / 3 = 90 %; B: 0.4*10/8 + 0.25*2/2 = 75 %;
    C: 0.75*12/4 / 3 = 75 %; D: 0.25*12/5 = 60 %. Spend: A 12 $/h, B 2, C 30, D 4 ->
    48 $/h = 35,040 $/month; azure (C) uses 21,900 of its 30,000 commitment, so the
    bill is 30,000 + 13,140 = 43,140 $/month. Power: us-east A+D 2.8 kW, us-west B+C
    5.25 kW. Every consistency check holds.
    """
    a = unit("chat/h100/aws/us-east/fp8/x1", "chat", "h100-sxm", "NVIDIA", "aws", "us-east",
             replicas=3, chips_per_replica=1, usd_per_chip_hour=4.0, watts_per_chip=700,
             caps=[cap(SHORT, 5.0, 6.0, 100), cap(LONG, 1.0, 1.25, 100)])
    b = unit("chat/mi300x/tw/us-west/fp8/x1", "chat", "mi300x", "AMD", "tw", "us-west",
             replicas=1, chips_per_replica=1, usd_per_chip_hour=2.0, watts_per_chip=750,
             caps=[cap(SHORT, 8.0, 10.0, 100), cap(LONG, 2.0, 2.5, 100)],
             provenance="extrapolated", uncertainty=0.3)
    c = unit(f"{EVIL_TIER}/maia/azure/us-west/fp8/x2", EVIL_TIER, "maia-200", "Microsoft",
             "azure", "us-west", replicas=3, chips_per_replica=2, usd_per_chip_hour=5.0,
             watts_per_chip=750, caps=[cap(SHORT, 4.0, 8.0, 50)], provenance="spec-sheet",
             uncertainty=0.5)
    d = unit(f"{EVIL_TIER}/h100/aws/us-east/fp8/x1", EVIL_TIER, "h100-sxm", "NVIDIA", "aws",
             "us-east", replicas=1, chips_per_replica=1, usd_per_chip_hour=4.0,
             watts_per_chip=700, caps=[cap(SHORT, 5.0, 6.0, 50)])
    units = [a, b, c, d]
    fleet = sum(u.usd_per_hour for u in units) * HOURS
    azure = c.usd_per_hour * HOURS  # 30 $/h -> 21,900 $/month, commitment 30,000
    committed = 30_000.0
    on_demand = fleet - azure
    return Plan(
        scenario=EVIL_SCENARIO, created="2026-11-22T00:00:00+00:00", objective="cost",
        tiers=[
            TierSummary(name="chat", model="llama-3.1-8b", slo_ttft_s=1.0, slo_tpot_s=0.05,
                        peak_requests_per_s=12.5, output_tokens_per_s=1250.0,
                        usd_per_million_output_tokens=14 / 3600 / 1250 * 1e6,
                        precisions=["fp8"]),
            TierSummary(name=EVIL_TIER, model="llama-3.1-8b", slo_ttft_s=2.0, slo_tpot_s=None,
                        peak_requests_per_s=10.0, output_tokens_per_s=500.0,
                        usd_per_million_output_tokens=34 / 3600 / 500 * 1e6,
                        precisions=["fp8"], precision_notes=["fp4 <b>forbidden</b>"]),
        ],
        units=units,
        traffic_split=[
            BucketSplit(tier="chat", bucket=SHORT, input_len=200, output_len=100,
                        peak_requests_per_s=10.0, shares={a.pool: 0.6, b.pool: 0.4}),
            BucketSplit(tier="chat", bucket=LONG, input_len=2000, output_len=100,
                        peak_requests_per_s=2.0, shares={a.pool: 0.75, b.pool: 0.25}),
            BucketSplit(tier=EVIL_TIER, bucket=SHORT, input_len=300, output_len=50,
                        peak_requests_per_s=12.0, shares={c.pool: 0.75, d.pool: 0.25}),
        ],
        cost=Cost(usd_per_month=committed + on_demand, fleet_usd_per_month=fleet,
                  committed_usd_per_month=committed, committed_used_usd_per_month=azure,
                  on_demand_usd_per_month=on_demand),
        vendor_share={"AMD": 0.25, "Microsoft": 0.35, "NVIDIA": 0.4},
        power_mw={"us-east": 0.0028, "us-west": 0.00525},
        limits={"headroom": 0.2, "derate": 1.0, "max_vendor_share": 0.5,
                "vendor_share_basis": "traffic", "n_minus_1": None,
                "power_mw": {"us-east": 1.0, "us-west": 0.5, "eu-north": 2.0},
                "supply_max_chips": {"h100-sxm@aws/us-east": 64},
                "contracts": {"azure-commit": {"cloud": "azure",
                                               "committed_usd_per_month": committed}},
                "residency": {}},
        baselines=[
            Baseline(name="cheapest mix, no policy constraints", usd_per_month=40_000.0,
                     feasible=True, note="supply, power and SLOs only"),
            Baseline(name="NVIDIA only", usd_per_month=None, feasible=False,
                     note="NVIDIA supply cannot serve it"),
        ],
        constraints=[
            ConstraintReport(name="contract azure-commit", binding=True,
                             marginal_usd_per_month=None, detail="30,000 USD/month committed"),
            ConstraintReport(name="power us-east", binding=False, marginal_usd_per_month=0.0,
                             detail="cap 1 MW; uses 0.0028 MW"),
            ConstraintReport(name="supply h100-sxm@aws/us-east", binding=True,
                             marginal_usd_per_month=1234.5, detail="at most 64 chips"),
            ConstraintReport(name="vendor-share", binding=True, marginal_usd_per_month=4321.0,
                             detail="max 50% per vendor (traffic)"),
        ],
        solver={"name": "HiGHS (scipy.optimize.milp)",
                "status": "Optimization terminated successfully. (HiGHS Status 7: Optimal)",
                "mip_gap": 0.0042, "seconds": 0.25, "candidates": 9, "variables": 40,
                "rows": 30},
        notes=["prices are <assumptions> & estimates"],
    )


@pytest.fixture
def plan() -> Plan:
    return small_plan()


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--virtual-time-budget=10000"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(page: Path, work: Path, *args: str, timeout: float = 180) -> str:
    """Run headless Chromium on a local file with a throwaway profile; returns stdout."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; "
                    "scripts/ci-system-deps.sh does it in CI)")
    profile = work / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
                           page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout
