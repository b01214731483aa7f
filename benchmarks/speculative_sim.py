"""Speculative decoding in the simulator against the performance model.

For each case one replica gets a backlog of 24 x C requests of one shape, held at C
sequences per engine lane with the token budget of the model's steady state (each
decoding sequence 1 + k tokens, prompts E * I / O per decode), so the simulator and
``TechniqueUnit.continuous`` at concurrency C describe the same batch. Printed: mean
TPOT and output tokens/s (middle half of the run), simulated and modelled, with and
without speculation.

    python benchmarks/speculative_sim.py

``tests/sim/test_speculative.py`` asserts the same comparisons (TPOT within 5 %,
throughput within 7 %, speculation at least 20 % below plain TPOT).
"""

from __future__ import annotations

import numpy as np

from tokenfleet.plan.schema import Layout, Plan
from tokenfleet.sim.engine import SimOptions
from tokenfleet.sim.fleet import EngineConfig, build_fleet
from tokenfleet.sim.quickplan import QuickPool, TierSpec, quick_plan
from tokenfleet.sim.run import simulate
from tokenfleet.sim.traffic import RouteKey, Workload

CASES = [
    # model, chip, chips, precision, layout, speculative, input, output, concurrency
    ("deepseek-r1", "h200", 8, "fp8", {"tp": 8, "ep": 8}, "mtp", 1024, 256, 16),
    ("deepseek-r1", "h200", 8, "fp8", {"tp": 8, "ep": 8}, "mtp:2:0.8", 1024, 256, 64),
    ("llama-3.3-70b", "h100-sxm", 4, "auto", None, "draft:llama-3.2-1b", 1024, 256, 16),
    ("llama-3.3-70b", "h100-sxm", 4, "auto", None, "fused:llama-3.2-1b:7:0.8", 1024, 256, 16),
    ("llama-3.3-70b", "h100-sxm", 4, "auto", None, "draft:llama-3.2-1b", 1024, 256, 64),
]


def _plan(model: str, accel: str, count: int, prec: str, layout: dict | None,
          spec: str | None, inp: int, out: int) -> Plan:
    plan = quick_plan([TierSpec("t", model, None, None, [(inp, out, 1.0)])],
                      [QuickPool("t", accel, 1, count=count, precision=prec)])
    update: dict[str, object] = {"speculative": spec}
    if layout is not None:
        update["layout"] = Layout(**layout)
    return plan.model_copy(update={"units": [plan.units[0].model_copy(update=update)]})


def _run(plan: Plan, inp: int, out: int, conc: int) -> tuple[float, float, float, float]:
    """(simulated TPOT s, simulated tokens/s, modelled TPOT s, modelled tokens/s)."""
    pool = build_fleet(plan).pools[0]
    k, e = pool.speculation.verify, pool.speculation.advance
    ref = pool.model.continuous(np.array([conc * pool.model.layout.dp]), inp, out)
    n = 24 * conc
    bucket = plan.traffic_split[0].bucket
    w = Workload(np.zeros(n), np.full(n, inp, np.int64), np.full(n, out, np.int64),
                 np.zeros(n, np.int32), [RouteKey("t", bucket)], "backlog")
    engine = EngineConfig(max_num_seqs=conc,
                          max_batched_tokens=round(conc * (1 + k + e * inp / out)))
    res = simulate(plan, w, engine=engine, options=SimOptions(sample_s=1.0))
    dep = res.record.departures_fine
    lo, hi = dep.size // 4, 3 * dep.size // 4
    tput = dep[lo:hi].sum() * out / ((hi - lo) * res.record.fine_s)
    return (res.summary.tiers["t"].tpot_s.mean, float(tput), float(ref["tpot_s"][0]),
            float(ref["output_tokens_per_s"][0]))


def main() -> None:
    print("| model, chips | speculative | I/O, C | TPOT sim / model (ms) | plain TPOT sim / "
          "model (ms) | tokens/s sim / model |")
    print("|---|---|---|---|---|---|")
    for model, accel, count, prec, layout, spec, inp, out, conc in CASES:
        s = _run(_plan(model, accel, count, prec, layout, spec, inp, out), inp, out, conc)
        p = _run(_plan(model, accel, count, prec, layout, None, inp, out), inp, out, conc)
        where = f"{model}, {count}x {accel}" + (f" {layout}" if layout else "")
        print(f"| {where} | {spec} | {inp}/{out}, {conc} | {s[0] * 1e3:.2f} / {s[2] * 1e3:.2f}"
              f" | {p[0] * 1e3:.2f} / {p[2] * 1e3:.2f} | {s[1]:,.0f} / {s[3]:,.0f} |")


if __name__ == "__main__":
    main()
