"""The emulated engine keeps the performance model's pace: step times from
``UnitModel.step_s``, continuous batching, a concurrency limit, cancellation."""

from __future__ import annotations

import asyncio
import math

import pytest

from tokenfleet.route.emulator import PoolSpec, build_engine
from tokenfleet.route.pace import (
    Engine,
    FixedLatencyEngine,
    FixedPacing,
    ModelPacing,
    Overloaded,
)

SPEC = PoolSpec(model="llama-3.1-70b", accelerator="maia-200")


async def _drain(engine, seq) -> list[float]:
    """Times (s, loop clock) at which each token became visible."""
    loop = asyncio.get_running_loop()
    times: list[float] = []
    seen = 0
    while not seq.finished:
        n = await engine.progress(seq, seen)
        times += [loop.time()] * (n - seen)
        seen = n
    return times


def test_pacing_is_the_unit_models_step():
    engine, unit = build_engine(SPEC)
    p = engine.pacing
    assert isinstance(p, ModelPacing)
    # pp = 1 here: an iteration is exactly one step_s of the unit.
    assert unit.layout.pp == 1
    assert p.iteration_s(8, 600.0, 0, 1) == pytest.approx(float(unit.step_s([8.0], 600.0)[0]))
    # More sequences or longer prompts never make a step faster.
    assert p.iteration_s(64, 600.0, 0, 1) >= p.iteration_s(8, 600.0, 0, 1)
    assert p.iteration_s(8, 600.0, 4096, 512) > p.iteration_s(8, 600.0, 0, 1)


def test_batch_ttft_and_tpot_follow_the_model():
    async def run() -> tuple[list[list[float]], float, Engine]:
        engine, _ = build_engine(SPEC)
        engine.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        seqs = [engine.submit(512, 12) for _ in range(8)]
        times = await asyncio.gather(*(_drain(engine, s) for s in seqs))
        await engine.stop()
        return times, t0, engine

    times, t0, engine = asyncio.run(run())
    p = engine.pacing
    ttft_pred = p.iteration_s(0, 0.0, 8 * 512, 512)
    tpot_pred = p.iteration_s(8, 512 + 6, 0, 1)
    # Tolerances allow for a busy 2-core machine; a pacing bug is off by far more.
    for tt in times:
        assert len(tt) == 12
        assert tt[0] - t0 == pytest.approx(ttft_pred, rel=0.25, abs=0.005)
        tpot = (tt[-1] - tt[0]) / 11
        assert tpot == pytest.approx(tpot_pred, rel=0.2)


def test_late_request_joins_the_running_batch():
    async def run() -> tuple[list[float], list[float]]:
        engine, _ = build_engine(SPEC)
        engine.start()
        a = engine.submit(128, 30)
        task_a = asyncio.create_task(_drain(engine, a))
        await asyncio.sleep(0.15)  # a few steps into A
        b = engine.submit(128, 3)
        tb = await _drain(engine, b)
        ta = await task_a
        await engine.stop()
        return ta, tb

    ta, tb = asyncio.run(run())
    # Continuous batching: B finishes while A is still generating.
    assert tb[-1] < ta[-1]


def test_concurrency_limit_queues_then_rejects():
    async def run() -> None:
        engine = Engine(FixedStep(0.01), replicas=1, max_batch=2, max_queue=1)
        engine.start()
        s = [engine.submit(10, 5) for _ in range(3)]
        with pytest.raises(Overloaded):
            engine.submit(10, 5)
        await asyncio.sleep(0.03)
        assert engine.running == 2 and engine.waiting == 1
        engine.cancel(s[0])  # a cancelled sequence frees its slot at the next step
        times = await _drain(engine, s[2])
        assert len(times) == 5
        await engine.stop()

    asyncio.run(run())


class FixedStep:
    def __init__(self, dt: float) -> None:
        self.dt = dt

    def iteration_s(self, decode: int, context: float, prefill_tokens: int,
                    prompt_len: float) -> float:
        return self.dt


def test_slowdown_stretches_steps():
    async def run(slowdown: float) -> float:
        engine = Engine(FixedStep(0.01), replicas=1)
        engine.slowdown = slowdown
        engine.start()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await _drain(engine, engine.submit(10, 10))
        await engine.stop()
        return loop.time() - t0

    fast, slow = asyncio.run(run(1.0)), asyncio.run(run(3.0))
    assert fast == pytest.approx(0.10, rel=0.3)
    assert slow / fast == pytest.approx(3.0, rel=0.25)


def test_fixed_latency_engine_is_deterministic():
    async def run() -> tuple[list[float], float]:
        engine = FixedLatencyEngine(FixedPacing(0.02, 0.01), max_in_flight=2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        a = engine.submit(10, 5)
        engine.submit(10, 5)
        with pytest.raises(Overloaded):
            engine.submit(10, 5)
        times = await _drain(engine, a)
        return [t - t0 for t in times], engine.running

    times, running = asyncio.run(run())
    assert times[0] == pytest.approx(0.02, abs=0.005)
    assert times[-1] == pytest.approx(0.06, abs=0.008)
    assert running == 1


def test_stop_cancels_everything():
    async def run() -> None:
        engine = Engine(FixedStep(0.01))
        engine.start()
        s = engine.submit(10, 1000)
        await asyncio.sleep(0.03)
        await engine.stop()
        assert s.cancelled
        assert await engine.progress(s, s.generated) == s.generated  # returns at once
        with pytest.raises(Overloaded):
            engine.submit(1, 1)

    asyncio.run(run())


SPEC_DRAFT = PoolSpec(model="llama-3.3-70b", accelerator="h100-sxm", count=4,
                      speculative="draft:llama-3.2-1b")


def test_a_speculative_pool_paces_as_the_technique_unit():
    """A plan unit's ``speculative`` reaches the emulator: at the model's steady-state
    batch one step over E tokens per step is ``TechniqueUnit``'s TPOT, and a prefill
    half does not speculate."""
    from tokenfleet.perf.techniques import TechniqueUnit

    engine, unit = build_engine(SPEC_DRAFT)
    assert isinstance(unit, TechniqueUnit) and unit.layout.pp == 1
    p = engine.pacing
    e = p.tokens_per_step
    assert e > 3.0 and engine.tokens_per_step == e
    conc, inp, out = 16, 1024, 256
    want = float(unit.continuous([conc], inp, out)["tpot_s"][0])
    got = p.iteration_s(conc, inp + out / 2, round(conc * e * inp / out), inp) / e
    assert got == pytest.approx(want, rel=0.01)
    plain, _ = build_engine(PoolSpec(model="llama-3.3-70b", accelerator="h100-sxm", count=4))
    assert got < 0.7 * plain.pacing.iteration_s(conc, inp + out / 2, 0, 1)
    from tokenfleet.sim.quickplan import QuickPool, TierSpec, quick_plan

    u = quick_plan([TierSpec("t", "llama-3.3-70b", None, None, [(inp, out, 1.0)])],
                   [QuickPool("t", "h100-sxm", 1, count=4,
                              speculative="draft:llama-3.2-1b")]).units[0]
    assert PoolSpec.from_plan_unit(u).speculative == "draft:llama-3.2-1b:4:0.8"
    pre = u.model_copy(update={"role": "prefill", "pair": "p"})
    assert PoolSpec.from_plan_unit(pre).speculative is None


def test_speculative_steps_give_e_tokens_each():
    async def run() -> tuple[list[int], int, float]:
        engine, _ = build_engine(SPEC_DRAFT)
        engine.start()
        seqs = [engine.submit(256, 20) for _ in range(4)]
        await asyncio.gather(*(_drain(engine, s) for s in seqs))
        steps = engine._replicas[0].steps
        await engine.stop()
        return [s.generated for s in seqs], steps, engine.tokens_per_step

    generated, steps, e = asyncio.run(run())
    assert generated == [20] * 4
    # the prompt's step makes the first token, then E per step
    assert steps == 1 + math.ceil(19 / e)
