"""The gateway's request sizing (tokenizer counts, output length from the tier's traffic)
and the backends' load read from their Prometheus /metrics for least-kv."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tokenfleet.route.backend_metrics import MetricsScraper, parse_load, prometheus_text
from tokenfleet.route.emulator import Emulator, PoolSpec, build_engine
from tokenfleet.route.tokens import OutputLengthPredictor, TokenCounter

from .conftest import BUCKET, OTHER_BUCKET, make_plan, unit

VLLM_TWO_ENGINES = """# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:num_requests_running{engine="0",model_name="m"} 7
vllm:num_requests_running{engine="1",model_name="m"} 5
vllm:num_requests_waiting{engine="0",model_name="m"} 2
vllm:num_requests_waiting{engine="1",model_name="m"} 0
vllm:generation_tokens_total{model_name="m"} 1.2e6
"""
SGLANG = """sglang:token_usage{model_name="q"} 0.52
sglang:num_running_reqs{model_name="q"} 8
sglang:num_queue_reqs{model_name="q"} 4
"""


def test_vllm_metrics_mean_kv_and_summed_counts() -> None:
    load = parse_load(VLLM_TWO_ENGINES)
    assert (load.kv_used, load.running, load.waiting) == (0.5, 12.0, 2.0)


def test_sglang_and_older_vllm_names() -> None:
    load = parse_load(SGLANG)
    assert (load.kv_used, load.running, load.waiting) == (0.52, 8.0, 4.0)
    assert parse_load("vllm:gpu_cache_usage_perc 0.3\n").kv_used == 0.3
    assert parse_load("# nothing here\nother_metric 1\n").kv_used is None


def test_emulator_metrics_round_trip() -> None:
    load = parse_load(prometheus_text(3, 1, 0.4, 'a "model"'))
    assert (load.kv_used, load.running, load.waiting) == (0.4, 3.0, 1.0)


def test_scraper_reads_a_live_emulator_and_forgets_stale_readings() -> None:
    async def run() -> None:
        engine, _ = build_engine(PoolSpec(model="llama-3.1-8b", accelerator="h100-sxm",
                                          count=1, precision="fp8", max_batch=4))
        em = Emulator(engine, "m")
        server = await em.serve()
        scraper = MetricsScraper([server.url], interval_s=0.05, stale_after_s=2.0)
        try:
            for _ in range(2):
                engine.submit(100, 100_000)
            await scraper.start()
            await asyncio.sleep(0.3)
            load = scraper.load(server.url)
            assert load is not None and load.running == 2.0 and load.kv_used == 0.5
            assert scraper.load(server.url, now=load.at_s + 10.0) is None
            assert scraper.load("http://127.0.0.1:1") is None
        finally:
            await scraper.stop()
            await server.stop()

    asyncio.run(run())


def _plan():
    return make_plan([unit("chat/a"), unit("chat/b")],
                     {("chat", BUCKET): {"chat/a": 1.0}, ("chat", OTHER_BUCKET): {"chat/b": 1.0}})


def test_output_length_comes_from_the_tiers_traffic_capped_by_max_tokens() -> None:
    # conftest's plan: every bucket of 'chat' has output_len 64
    pred = OutputLengthPredictor(_plan())
    assert pred.predict("chat", 100, None) == 64
    assert pred.predict("chat", 100, 4096) == 64  # a large ceiling says little
    assert pred.predict("chat", 100, 16) == 16  # a small one binds
    assert pred.predict("no-such-tier", 100, None) == 256  # the stated default


def test_output_length_follows_the_prompt_band_from_edges_or_nearest_split() -> None:
    plan = make_plan([unit("chat/a")], {("chat", BUCKET): {"chat/a": 1.0},
                                        ("chat", OTHER_BUCKET): {"chat/a": 1.0}})
    short, long_ = plan.traffic_split
    long_.input_len, long_.output_len = 4000, 900  # the long-prompt band answers longer
    pred = OutputLengthPredictor(plan)
    assert pred.predict("chat", 100, None) == 64  # in the [0, 512) band by the edges
    assert pred.predict("chat", 600, None) == 900  # [512, inf): 600 is nearer 256 in log
    plan.buckets = None  # a hand-made plan without edges: the nearest split's length
    pred = OutputLengthPredictor(plan)
    assert pred.predict("chat", 300, None) == 64
    assert pred.predict("chat", 3000, None) == 900


def test_token_counter_uses_the_tokenizer_when_given(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = tokenizers.Tokenizer(WordLevel({"[UNK]": 0, "hello": 1, "fleet": 2},
                                         unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    body = {"messages": [{"role": "user", "content": "hello fleet hello"},
                         {"role": "user", "content": [{"type": "text", "text": "x y"}]}]}
    assert TokenCounter(path).count("chat", body) == 5
    # without a tokenizer: ceil(chars / 4) per text = ceil(17/4) + ceil(3/4) = 5 + 1
    assert TokenCounter().count("chat", body) == 6
    assert TokenCounter(path).count("completion", {"prompt": [1, 2, 3]}) == 3


def test_least_kv_routes_away_from_the_backend_whose_metrics_say_full(two_pool_plan) -> None:
    import aiohttp

    from tokenfleet.route.auth import ApiKeys
    from tokenfleet.route.config import BackendsFile
    from tokenfleet.route.gateway import Gateway
    from tokenfleet.route.server import RunningServer

    from .conftest import Stack, wait_for

    async def run() -> None:
        async with Stack() as st:
            ems = []
            for _ in range(2):
                eng, _u = build_engine(PoolSpec(model="llama-3.1-8b", accelerator="h100-sxm",
                                                count=1, precision="fp8", max_batch=8))
                em = Emulator(eng, "llama-3.1-8b")
                st.servers.append(await em.serve())
                ems.append(em)
            busy, idle = ems
            for _ in range(6):  # 6 of 8 slots: the busy pool reports 75 % KV in use
                busy.engine.submit(100, 1_000_000)
            backends = BackendsFile.model_validate({
                "gateway": {"policy": "least-kv"},
                "pools": {"chat/cheap": {"backends": [busy.server.url]},
                          "chat/dear": {"backends": [idle.server.url]}}})
            gw = Gateway(two_pool_plan, backends, ApiKeys([]))
            srv = await RunningServer(gw.make_app()).start()
            st.servers.append(srv)
            assert gw._scraper is not None
            scraper = gw._scraper

            def scraped() -> bool:
                hot, cold = scraper.load(busy.server.url), scraper.load(idle.server.url)
                return (hot is not None and cold is not None and hot.kv_used == 0.75
                        and cold.kv_used == 0.0)

            await wait_for(scraped)
            pools = []
            async with aiohttp.ClientSession() as s:
                for _ in range(5):
                    async with s.post(srv.url + "/v1/chat/completions", json={
                            "model": "chat", "max_tokens": 2,
                            "messages": [{"role": "user", "content": "hi"}]}) as r:
                        assert r.status == 200
                        pools.append(r.headers["X-Tokenfleet-Pool"])
            assert pools == ["chat/dear"] * 5

    asyncio.run(run())
