"""Speculative decoding / MTP in the simulator (a pool whose plan unit sets
``speculative``): the deterministic rule (``E`` tokens per iteration, ``ceil(n / E)``
iterations for ``n`` tokens), conservation of requests and tokens, agreement with the
performance model (``TechniqueUnit.continuous``), the drafter's memory, replays that
repeat, disaggregated decode halves, and bad settings named by field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.cli import main
from tokenfleet.perf.speculative import expected_tokens_per_step
from tokenfleet.perf.techniques import TechniqueUnit
from tokenfleet.plan.prefix import lane_kv_tokens
from tokenfleet.plan.schema import Layout, Plan
from tokenfleet.sim.engine import SimOptions, Simulator
from tokenfleet.sim.fleet import EngineConfig, build_fleet
from tokenfleet.sim.results import summarize
from tokenfleet.sim.run import simulate
from tokenfleet.sim.shocks import parse_failure
from tokenfleet.sim.stepcost import ADVANCE_QUANTUM
from tokenfleet.sim.traffic import planned_traffic, scale_traffic

from .conftest import fixed_workload, one_pool_plan
from .test_disagg import _pair_plan
from .test_split import _assert_same, _comparable


def _with(plan: Plan, i: int = 0, **update: object) -> Plan:
    units = list(plan.units)
    units[i] = units[i].model_copy(update=update)
    return plan.model_copy(update={"units": units})


@pytest.fixture(scope="module")
def small_plan() -> Plan:
    return one_pool_plan("llama-3.1-8b", "h100-sxm", 1, 512, 64)


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, 300), k=st.integers(1, 7), a=st.floats(0.0, 1.0))
def test_a_lone_request_decodes_in_ceil_n_over_e_iterations(small_plan: Plan, out: int,
                                                           k: int, a: float) -> None:
    """One request on an idle lane: its prompt's iteration makes the first token, then
    every iteration E more, so the lane runs 1 + ceil((out - 1) / E) iterations, and
    its KV and context come back to exactly zero (no drift)."""
    plan = _with(small_plan, speculative=f"draft:llama-3.2-1b:{k}:{a!r}")
    fleet = build_fleet(plan)
    spec = fleet.pools[0].speculation
    assert spec.verify == k
    e = expected_tokens_per_step(k, a)
    assert abs(spec.advance - e) <= ADVANCE_QUANTUM / 2 + 1e-12
    sim = Simulator(fleet, fixed_workload(plan, np.zeros(1), 512, out), SimOptions())
    rec = sim.run()
    assert rec.completed == 1
    assert int(sim.step[0]) == 1 + math.ceil((out - 1) / spec.advance)
    assert sim.kv[0] == 0.0 and sim.dec_ctx[0] == 0.0 and sim.n_dec[0] == 0


@pytest.mark.parametrize(("model", "accel", "count", "prec", "layout", "spec"), [
    ("deepseek-r1", "h200", 8, "fp8", {"tp": 8, "ep": 8}, "mtp:2:0.8"),
    ("llama-3.3-70b", "h100-sxm", 4, "auto", None, "draft:llama-3.2-1b"),
    ("llama-3.3-70b", "h100-sxm", 4, "auto", {"tp": 2, "pp": 2}, "fused:llama-3.2-1b:7:0.8"),
])
def test_a_speculative_iteration_is_the_technique_units(model: str, accel: str, count: int,
                                                        prec: str, layout: dict | None,
                                                        spec: str) -> None:
    """The compiled iteration of a speculative lane is ``TechniqueUnit``'s step (the
    target's with the verify positions, plus ``drafter_s``): to 1e-9 for a decode-only
    batch, and to 1e-3 with prompt tokens (the model prices them and the verify
    positions at one rounded prompt length)."""
    from tokenfleet.sim import kernels
    from tokenfleet.sim.stepcost import FleetStepCost, prefill_attention_per_token

    plan = one_pool_plan(model, accel, count, 1024, 256, precision=prec, speculative=spec)
    if layout is not None:
        plan = _with(plan, layout=Layout(**layout))
    pool = build_fleet(plan).pools[0]
    unit = pool.model
    assert isinstance(unit, TechniqueUnit)
    cost = FleetStepCost([pool.coeffs], np.zeros(1, np.int64), [pool.speculation], [unit])
    k, pp = pool.speculation.verify, unit.layout.pp
    for dec, ctx, pre, attn in ((16.0, 1500.0, 0.0, 1), (64.0, 900.0, 0.0, 1),
                                (16.0, 1500.0, 2048.0, 1024)):
        att = pre * prefill_attention_per_token(unit, attn)
        got = kernels.speculative_s(cost.table, cost.spec, 0, dec, ctx, pre, att, k,
                                    cost.sliding, cost.moe)
        micro = np.array([dec / pp])
        mixed = unit._mixed_len(pre / pp, micro * k, attn, ctx)
        want = float((pp * unit.step_s(micro, ctx, pre / pp + micro * k, mixed)
                      + unit.drafter_s(np.array([dec]), micro, ctx, np.array([pre]),
                                       attn))[0])
        assert got == pytest.approx(want, rel=1e-9 if pre == 0 else 1e-3)


def test_requests_and_tokens_are_conserved() -> None:
    """An overloaded MTP pool (DeepSeek-R1) beside a plain one, with an outage: every
    request ends once, the completed ones carry exactly their output tokens, lanes end
    empty, and Little's law holds."""
    from tokenfleet.sim.quickplan import QuickPool, TierSpec, quick_plan

    plan = quick_plan(
        [TierSpec("t", "deepseek-r1", 5.0, 0.2, [(2000, 600, 0.5), (400, 1200, 0.5)])],
        [QuickPool("t", "h200", 2, count=8, precision="fp8", speculative="mtp"),
         QuickPool("t", "h200", 1, count=8, precision="fp8", region="region-2")],
        load=0.8)
    w = scale_traffic(planned_traffic(plan, 60, seed=2), 2.0, seed=2)
    fleet = build_fleet(plan)
    sim = Simulator(fleet, w, SimOptions(sample_s=0.5),
                    [parse_failure("region=region-2@t=20..30")], [])
    rec = sim.run()
    s = summarize(rec)
    assert rec.completed == len(w) and rec.rejected == 0 and rec.retried > 0
    assert int(rec.tiers.output_tokens.sum()) == int(w.output_tokens.sum())
    assert int(rec.tiers.completed.sum()) == len(w)
    assert s.checks.conservation_ok and s.checks.littles_law.ok
    assert not sim.kv.any() and not sim.dec_ctx.any() and not sim.n_dec.any()


STEADY = [
    # model, chip, chips, precision, layout, speculative, input, output, concurrency
    # DeepSeek-R1 on tp8 ep8: with attention-DP (the estimate's own choice, dp8) the
    # model charges every rank the busiest rank's prefill, which the simulator's
    # independent lanes do not reproduce even without speculation.
    ("deepseek-r1", "h200", 8, "fp8", {"tp": 8, "ep": 8}, "mtp", 1024, 256, 16),
    ("deepseek-r1", "h200", 8, "fp8", {"tp": 8, "ep": 8}, "mtp:2:0.8", 1024, 256, 64),
    ("llama-3.3-70b", "h100-sxm", 4, "auto", None, "draft:llama-3.2-1b", 1024, 256, 16),
    ("llama-3.3-70b", "h100-sxm", 4, "auto", None, "fused:llama-3.2-1b:7:0.8", 1024, 256, 16),
]


def _steady(plan: Plan, inp: int, out: int, conc: int) -> tuple[float, float]:
    """(mean TPOT, output tokens/s in the middle half) of a backlog of 24 x conc
    requests on one replica held at ``conc`` sequences per lane, with the token budget
    of the model's steady state (each decode 1 + k tokens, prompts E I / O per
    decode): like with like, as ``test_agreement.py`` does for plain pools."""
    pool = build_fleet(plan).pools[0]
    k, e = pool.speculation.verify, pool.speculation.advance
    n = 24 * conc
    engine = EngineConfig(max_num_seqs=conc,
                          max_batched_tokens=round(conc * (1 + k + e * inp / out)))
    res = simulate(plan, fixed_workload(plan, np.zeros(n), inp, out), engine=engine,
                   options=SimOptions(sample_s=1.0))
    rec, s = res.record, res.summary
    assert s.completed == n and s.preemptions == 0
    dep = rec.departures_fine
    lo, hi = dep.size // 4, 3 * dep.size // 4
    tput = dep[lo:hi].sum() * out / ((hi - lo) * rec.fine_s)
    return s.tiers["t"].tpot_s.mean, tput


@pytest.mark.parametrize(("model", "accel", "count", "prec", "layout", "spec", "inp", "out",
                          "conc"), STEADY)
def test_steady_state_matches_the_technique_unit(model: str, accel: str, count: int,
                                                 prec: str, layout: dict | None, spec: str,
                                                 inp: int, out: int, conc: int) -> None:
    """Mean TPOT within 5 % and throughput within 7 % of ``TechniqueUnit.continuous`` at
    the simulated concurrency, and TPOT below the same pool's without speculation."""
    plain = one_pool_plan(model, accel, count, inp, out, precision=prec)
    if layout is not None:
        plain = _with(plain, layout=Layout(**layout))
    plan = _with(plain, speculative=spec)
    unit = build_fleet(plan).pools[0].model
    assert isinstance(unit, TechniqueUnit)
    ref = unit.continuous(np.array([conc * unit.layout.dp]), inp, out)
    tpot, tput = _steady(plan, inp, out, conc)
    assert tpot == pytest.approx(float(ref["tpot_s"][0]), rel=0.05)
    assert tput == pytest.approx(float(ref["output_tokens_per_s"][0]), rel=0.07)
    tpot_plain, _ = _steady(plain, inp, out, conc)
    assert tpot < 0.8 * tpot_plain


def test_the_drafter_takes_kv_memory() -> None:
    """A drafter's weights and KV come off the lane's KV capacity, the figure the
    planner sizes caches with too (plan/prefix.py)."""
    for model, accel, chips, spec in (("llama-3.3-70b", "h100-sxm", 4, "draft:llama-3.2-1b"),
                                      ("deepseek-r1", "h200", 8, "mtp")):
        plain = one_pool_plan(model, accel, chips, 1024, 256)
        plan = _with(plain, speculative=spec)
        pool, base = build_fleet(plan).pools[0], build_fleet(plain).pools[0]
        assert 0 < pool.kv_tokens < base.kv_tokens
        assert pool.kv_tokens == lane_kv_tokens(pool.model)


def test_same_replay_twice_gives_the_same_result() -> None:
    plan = one_pool_plan("llama-3.3-70b", "h100-sxm", 4, 1500, 300, replicas=3,
                         speculative="fused:llama-3.2-1b:5:0.75")
    w = scale_traffic(planned_traffic(plan, 40, seed=5), 1.5, seed=5)
    runs = [simulate(plan, w, options=SimOptions(seed=4),
                     failures=[parse_failure(f"replicas={plan.units[0].pool}:1@t=10..20")]
                     ).summary
            for _ in range(2)]
    _assert_same(_comparable(runs[0]), _comparable(runs[1]))
    assert runs[0].completed == len(w)


def test_a_speculative_decode_half() -> None:
    """A disaggregated pair whose decode half speculates: tokens conserved, decode
    TPOT lower than the plain pair's; a prefill half's setting is not simulated (it
    does not decode; the performance model prices a prefill role without it too)."""
    plain = _pair_plan(agg_share=0.0)
    w = planned_traffic(plain, 40, seed=7)
    spec = _with(_with(plain, 2, speculative="draft:llama-3.2-1b"), 1,
                 speculative="draft:llama-3.2-1b")
    decode_pool = plain.units[2].pool
    tpot = {}
    for name, plan in (("plain", plain), ("spec", spec)):
        s = simulate(plan, w).summary
        assert s.completed == len(w) and s.checks.conservation_ok
        t = s.tiers["t"]
        assert t.output_tokens_per_s * s.sim_duration_s == pytest.approx(
            int(w.output_tokens.sum()), rel=1e-6)
        tpot[name] = s.pools[decode_pool].tpot_s.mean
    assert tpot["spec"] < 0.8 * tpot["plain"]
    pre = build_fleet(spec, pool_ids=[spec.units[1].pool]).pools[0]
    assert pre.speculation.verify == 0 and not isinstance(pre.model, TechniqueUnit)


@pytest.mark.parametrize("bad", ["eagle:3", "mtp:0", "mtp:2:1.5", "draft:no-such-model",
                                 "draft:mistral-7b"])
def test_bad_speculative_setting_names_the_field(two_vendor_plan: Plan, tmp_path: Path,
                                                 capsys, bad: str) -> None:
    d = json.loads(two_vendor_plan.model_dump_json())
    d["units"][1]["speculative"] = bad
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(SystemExit) as e:
        main(["simulate", str(p), "--duration", "5"])
    err = capsys.readouterr().err.strip()
    assert int(e.value.code or 0) == 2
    assert "units[1].speculative" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
