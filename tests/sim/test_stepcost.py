"""The simulator's vectorised step time is the performance model's ``step_s``."""

from __future__ import annotations

import numpy as np
import pytest

from tokenfleet.catalog import load_catalog
from tokenfleet.perf.calibration import load_fit
from tokenfleet.perf.precision import get_precision
from tokenfleet.perf.unit import UnitModel, layouts_for
from tokenfleet.sim.stepcost import (
    FleetStepCost,
    PrefillAttention,
    StageCoefficients,
    prefill_attention_per_token,
    stage_time,
)

# Dense GQA, MoE with expert parallelism, MLA, sliding-window layers, pipelines.
CASES = [
    ("llama-3.1-70b", "h100-sxm", "fp8", 8),
    ("deepseek-r1", "b200", "fp8", 16),
    ("gpt-oss-120b", "mi300x", "bf16", 4),
    ("qwen3-235b-a22b", "tpu-v6e", "bf16", 16),
    ("gemma-7b", "trainium2", "bf16", 2),
]


def case_units(layouts: int = 1) -> list[UnitModel]:
    """Replica models of every case, its first ``layouts`` layouts each."""
    cat, cal = load_catalog(), load_fit()
    units = []
    for model, accel, prec, count in CASES:
        m, a = cat.model(model), cat.accelerator(accel)
        eff, _ = cal.efficiency(a.family, None)
        p = get_precision(prec)
        units += [UnitModel(m, a, p, p.default_kv, lo, eff)
                  for lo in layouts_for(m, count)[:layouts]]
    return units


@pytest.mark.parametrize(("model", "accel", "prec", "count"), CASES)
def test_stage_time_equals_step_s(model: str, accel: str, prec: str, count: int) -> None:
    cat, cal = load_catalog(), load_fit()
    m, a = cat.model(model), cat.accelerator(accel)
    eff, _ = cal.efficiency(a.family, None)
    p = get_precision(prec)
    rng = np.random.default_rng(7)
    checked = 0
    for lo in layouts_for(m, count):
        u = UnitModel(m, a, p, p.default_kv, lo, eff)
        c = StageCoefficients.of(u)
        for _ in range(12):
            dec = float(rng.integers(0, 400))
            pre = float(rng.integers(0, 6000))
            ctx = float(rng.integers(1, 60000))
            plen = int(rng.integers(1, 60000))
            want = float(u.step_s(np.array([dec]), ctx, np.array([pre]), plen)[0])
            got = float(stage_time(c, np.array([dec]), np.array([ctx]), np.array([pre]),
                                   np.array([pre * prefill_attention_per_token(u, plen)]))[0])
            assert got == pytest.approx(want, rel=1e-9), (lo, dec, pre, ctx, plen)
            checked += 1
    assert checked >= 12


def test_iteration_is_pp_micro_steps_as_continuous() -> None:
    """One iteration of C sequences with C*I/O prompt tokens is the t_iter of
    UnitModel.continuous (TPOT of the steady state)."""
    cat, cal = load_catalog(), load_fit()
    m, a = cat.model("llama-3.1-70b"), cat.accelerator("h100-sxm")
    eff, _ = cal.efficiency(a.family, None)
    p = get_precision("fp8")
    for lo in layouts_for(m, 4):
        u = UnitModel(m, a, p, "fp8", lo, eff)
        fc = FleetStepCost([StageCoefficients.of(u)], np.zeros(1, dtype=np.int64))
        c, i, o = 96.0, 1024, 256
        per = c / lo.dp
        t = fc.iteration_s(np.array([0]), np.array([per]), np.array([i + o / 2]),
                           np.array([per / o * i]),
                           np.array([per / o * i * prefill_attention_per_token(u, i)]))
        want = u.continuous(np.array([c]), i, o)["tpot_s"][0]
        assert float(t[0]) == pytest.approx(float(want), rel=1e-9)


@pytest.mark.parametrize(("model", "accel", "prec", "count"), CASES)
def test_fleet_iteration_is_pp_stage_steps(model: str, accel: str, prec: str,
                                           count: int) -> None:
    """The fleet-wide iteration (MoE and sliding terms included) is pp x step_s of the
    micro-batch, for every layout of one chip count."""
    cat, cal = load_catalog(), load_fit()
    m, a = cat.model(model), cat.accelerator(accel)
    eff, _ = cal.efficiency(a.family, None)
    p = get_precision(prec)
    units = [UnitModel(m, a, p, p.default_kv, lo, eff) for lo in layouts_for(m, count)]
    fc = FleetStepCost([StageCoefficients.of(u) for u in units],
                       np.arange(len(units), dtype=np.int64))
    idx = np.arange(len(units))
    dec, ctx, pre, plen = 96.0, 5000.0, 700.0, 3000
    got = fc.iteration_s(idx, np.full(len(units), dec), np.full(len(units), ctx),
                         np.full(len(units), pre),
                         np.array([pre * prefill_attention_per_token(u, plen) for u in units]))
    for u, g in zip(units, got, strict=True):
        pp = u.layout.pp
        want = pp * float(u.step_s(np.array([max(dec / pp, 1.0)]), ctx,
                                   np.array([pre / pp]), plen)[0])
        assert float(g) == pytest.approx(want, rel=1e-9), u.layout


def test_vectorised_prefill_attention_is_the_scalar_one() -> None:
    """The admission path's array version gives the same bits as the scalar function,
    for dense, MLA and sliding-window models, prompts shorter and longer than a window."""
    units = case_units()
    pa = PrefillAttention(units)
    rng = np.random.default_rng(3)
    pool = rng.integers(0, len(units), 500)
    plen = rng.integers(1, 40000, 500)
    plen[:5] = [1, 2, 127, 4096, 4097]
    got = pa.per_token(pool, plen)
    want = [prefill_attention_per_token(units[k], int(n))
            for k, n in zip(pool, plen, strict=True)]
    assert got.tolist() == want
