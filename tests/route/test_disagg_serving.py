"""A disaggregated tier served live: gateway -> prefill pool (one token, KV handed on)
-> decode pool (the answer), on emulators paced by the performance model; and what
happens when the prefill pool fails."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tokenfleet.plan.schema import PlanUnit
from tokenfleet.route.emulator import Emulator, Faults
from tokenfleet.route.loadgen import LoadGenerator, schedule, summarize
from tokenfleet.route.pace import FixedLatencyEngine, FixedPacing
from tokenfleet.route.plan_emulator import emulators_for, handover_fn, start_all

from .conftest import OTHER_BUCKET, Stack, make_plan, start_gateway, unit
from .test_gateway import _metric

MODEL = "llama-3.1-8b"
PRE, DEC, AGG = "chat/pd/prefill", "chat/pd/decode", "chat/agg"
PROMPT_TOKENS = 6000  # long prompts: their prefill dominates TTFT
OUT_TOKENS = 8


def _half(role: str, pool: str) -> PlanUnit:
    return unit(pool, accelerator="h100-sxm", model=MODEL).model_copy(update={
        "role": role, "pair": "chat/pd", "kv_link": "scale-up" if role == "prefill" else None})


def _plan(with_aggregated: bool = False):
    units = [_half("prefill", PRE), _half("decode", DEC)]
    shares = {DEC: 1.0}
    if with_aggregated:
        units.append(unit(AGG, accelerator="h100-sxm", model=MODEL, usd_per_hour=30.0))
        shares = {DEC: 0.99, AGG: 0.01}  # the pair takes (nearly) everything
    return make_plan(units, {("chat", OTHER_BUCKET): shares}, slo_ttft_s=5.0, slo_tpot_s=0.2)


async def _stats(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(url + "/stats") as r:
        return await r.json()


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        return await r.text()


def _load(n_per_s: float, duration_s: float, seed: int, out_tokens: int = OUT_TOKENS
          ) -> list:
    return schedule(None, {"chat": 1.0}, rate_per_s=n_per_s, duration_s=duration_s,
                    input_tokens=PROMPT_TOKENS, output_tokens=out_tokens, seed=seed)


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "buffered"])
def test_pair_serves_end_to_end_prefill_then_decode(stream):
    async def run() -> None:
        plan = _plan()
        async with Stack() as st:
            pools = await start_all(emulators_for(plan))
            st.servers.extend(p.server for p in pools)
            by = {p.unit.pool: p for p in pools}
            assert by[PRE].emulator.role == "prefill" and by[DEC].emulator.role == "decode"
            _, gw = await start_gateway(st, plan, {"pools": {
                name: {"backends": [p.url]} for name, p in by.items()}})
            reqs = _load(8.0, 1.5, seed=3)
            result = await LoadGenerator(gw.url, stream=stream, timeout_s=30.0).run(reqs)
            pre, dec = await _stats(by[PRE].url), await _stats(by[DEC].url)
            metrics = await _metrics(gw.url)
            async with aiohttp.ClientSession() as c, c.get(gw.url + "/v1/models") as r:
                listed = (await r.json())["data"][0]["tokenfleet"]["pools"]

            s = summarize(result)
            assert s.requests == len(reqs) >= 5
            assert s.completed == s.requests  # nothing lost
            # Every answer is the decode pool's, with exactly max_tokens tokens.
            assert all(r.output_tokens == OUT_TOKENS for r in result.results)
            assert {r.pool for r in result.results} == {DEC}
            # The prefill pool saw each request once and handed each KV cache on; the
            # decode pool got every one with its KV cache.
            assert pre["completed"] == pre["kv_sent"] == len(reqs)
            assert dec["completed"] == dec["kv_received"] == len(reqs)
            assert _metric(metrics, "tokenfleet_gateway_prefill_hops_total", pool=PRE,
                           outcome="ok") == len(reqs)
            assert _metric(metrics, "tokenfleet_gateway_prefill_seconds_count",
                           pool=PRE) == len(reqs)
            # The tier lists both halves (its cost is both pools'), the decode pool
            # naming its prefill pool.
            assert [(p["pool"], p["role"], p.get("prefill_pool")) for p in listed] == [
                (DEC, "decode", PRE), (PRE, "prefill", None)]
            # The decode pool's TTFT is the KV handover and a decode step, not the
            # prompt's prefill, which the prefill pool spent.
            handover = handover_fn(plan.units[0], plan.units[1])(PROMPT_TOKENS)
            assert handover > 0
            assert dec["mean_ttft_s"] >= handover
            assert dec["mean_ttft_s"] < 0.3 * pre["mean_ttft_s"]
            if stream:  # the client's TTFT holds both pools' parts
                ttfts = [r.ttft_s for r in result.results if r.ttft_s is not None]
                assert min(ttfts) >= pre["mean_ttft_s"] * 0.5

    asyncio.run(run())


def test_decode_emulator_prefills_itself_without_kv():
    """The same prompt straight to the decode pool, with and without the prefill pool's
    kv_transfer_params: only with them does it skip the prefill."""
    async def run() -> None:
        plan = _plan()
        async with Stack() as st:
            pools = await start_all(emulators_for(plan, pools=[DEC]))
            st.servers.extend(p.server for p in pools)
            url, em = pools[0].url, pools[0].emulator
            body = {"model": MODEL, "prompt": "x" * (4 * PROMPT_TOKENS), "max_tokens": 2}
            async with aiohttp.ClientSession() as s:
                async with s.post(url + "/v1/completions", json=body) as r:
                    assert r.status == 200
                cold = em.ttft_sum_s
                kv = {"do_remote_prefill": True, "remote_engine_id": "e"}
                async with s.post(url + "/v1/completions",
                                  json={**body, "kv_transfer_params": kv}) as r:
                    assert r.status == 200
                warm = em.ttft_sum_s - cold
                async with s.post(url + "/v1/completions",
                                  json={**body, "kv_transfer_params": 3}) as r:
                    assert r.status == 400
            assert em.kv_received == 1
            assert warm < 0.3 * cold

    asyncio.run(run())


async def _fixed(st: Stack, role: str, error_rate: float = 0.0) -> Emulator:
    faults = Faults()
    faults.update({"error_rate": error_rate})
    em = Emulator(FixedLatencyEngine(FixedPacing(0.005, 0.002)), MODEL, faults, role=role)
    st.servers.append(await em.serve())
    return em


@pytest.mark.parametrize("case", ["one_prefill_backend_fails", "prefill_pool_down_failover",
                                  "prefill_pool_down_alone"])
def test_prefill_failures_lose_no_request(case):
    async def run() -> None:
        agg = case == "prefill_pool_down_failover"
        async with Stack() as st:
            good = await _fixed(st, "prefill", 1.0 if case != "one_prefill_backend_fails"
                                else 0.0)
            bad = await _fixed(st, "prefill", 1.0)
            dec = await _fixed(st, "decode")
            pools = {PRE: {"backends": [bad.server.url, good.server.url]},
                     DEC: {"backends": [dec.server.url]}}
            if agg:
                other = await _fixed(st, "both")
                pools[AGG] = {"backends": [other.server.url]}
            _, gw = await start_gateway(st, _plan(with_aggregated=agg), {
                "gateway": {"breaker": {"failures": 1000}}, "pools": pools})
            reqs = _load(40.0, 1.0, seed=5)
            result = await LoadGenerator(gw.url, stream=True, timeout_s=10.0).run(reqs)
            metrics = await _metrics(gw.url)
            s = summarize(result)
            assert s.completed == s.requests == len(reqs) > 10
            assert all(r.output_tokens == OUT_TOKENS for r in result.results)
            errors = _metric(metrics, "tokenfleet_gateway_prefill_hops_total", outcome="error")
            assert errors >= 1
            if case == "one_prefill_backend_fails":
                # retried on the other prefill backend: every request still disaggregated
                assert good.kv_sent == dec.kv_received == len(reqs)
            elif agg:
                # the pair's prefill is down: the aggregated pool of the tier serves
                assert other.engine.completed == len(reqs) and dec.engine.completed == 0
            else:
                # nothing else in the tier: the decode pool prefills the prompts itself
                assert dec.engine.completed == len(reqs) and dec.kv_received == 0

    asyncio.run(run())


def test_decode_backend_dying_mid_stream_is_resumed_through_prefill():
    """A decode backend crashes while streaming: each cut stream goes on at the other
    decode backend, its continuation (prompt plus the text so far) prefilled first."""
    async def run() -> None:
        async with Stack() as st:
            pre = await _fixed(st, "prefill")
            dec = [await _fixed(st, "decode") for _ in range(2)]
            _, gw = await start_gateway(st, _plan(), {"pools": {
                PRE: {"backends": [pre.server.url]},
                DEC: {"backends": [d.server.url for d in dec]}}})
            reqs = _load(40.0, 1.0, seed=9, out_tokens=60)

            async def kill_later() -> None:
                await asyncio.sleep(0.5)
                await dec[0].die()

            killer = asyncio.create_task(kill_later())
            result = await LoadGenerator(gw.url, stream=True, timeout_s=10.0).run(reqs)
            await killer
            metrics = await _metrics(gw.url)
            s = summarize(result)
            assert s.completed == s.requests == len(reqs) > 10
            assert all(r.output_tokens == 60 for r in result.results)
            resumed = _metric(metrics, "tokenfleet_gateway_stream_resumes_total",
                              outcome="resumed")
            assert resumed >= 1
            # a prefill per request, and one more per continuation (and per attempt
            # retried at another decode backend before its first token)
            assert pre.kv_sent >= len(reqs) + resumed
            assert _metric(metrics, "tokenfleet_gateway_prefill_hops_total",
                           outcome="ok") == pre.kv_sent
            assert dec[1].kv_received >= resumed

    asyncio.run(run())


def test_request_refused_by_prefill_is_answered_by_decode_pool():
    """A prompt over the context limit: the prefill backend refuses it as the request's
    fault (400), nothing is retried, and the client gets the decode pool's own 400."""
    async def run() -> None:
        async with Stack() as st:
            pre = await _fixed(st, "prefill")
            dec = await _fixed(st, "decode")
            pre.max_context_tokens = dec.max_context_tokens = 1000
            _, gw = await start_gateway(st, _plan(), {"pools": {
                PRE: {"backends": [pre.server.url]}, DEC: {"backends": [dec.server.url]}}})
            body = {"model": "chat", "prompt": "x" * (4 * PROMPT_TOKENS), "max_tokens": 4}
            async with aiohttp.ClientSession() as s, \
                    s.post(gw.url + "/v1/completions", json=body) as r:
                assert r.status == 400
                assert "context" in (await r.json())["error"]["message"]
            metrics = await _metrics(gw.url)
            assert _metric(metrics, "tokenfleet_gateway_prefill_hops_total",
                           outcome="client_error") == 1
            assert _metric(metrics, "tokenfleet_gateway_retries_total") == 0

    asyncio.run(run())
