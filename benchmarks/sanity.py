"""Sanity table: ``estimate`` on public headline figures that are NOT in the calibration set.

Each figure is asked as a user would ask ``tokenfleet estimate`` (chips, count,
precision, engine, lengths, and the layout the source states) and printed as
predicted / measured. These rows are disaggregated prefill-only or decode-only
deployments (which the calibration excludes), so they are mapped onto the colocated
model this way, stated per row:

* decode-only: prompt of 1 token and ``2 x context`` output tokens, so the mean context
  is the source's context and prompts cost nothing; throughput = output tokens/s;
* prefill-only: 1 output token; throughput = requests/s x prompt tokens (input tokens/s).

Per-node figures are divided by the nodes in the estimated unit; per-GPU figures by
the chips. H800 (DeepSeek's production chip) is not in the catalog: it is asked as
H100 SXM (same compute and HBM; H800 has 400 GB/s NVLink instead of 900).

Run:  python benchmarks/sanity.py
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenfleet.catalog import load_catalog
from tokenfleet.perf.estimate import Query, estimate

DS_DAY6 = ("deepseek-ai/open-infra-index@56d86855:202502OpenSourceWeek/"
           "day_6_one_more_thing_deepseekV3R1_inference_system_overview.md")
LMSYS_EP = "lm-sys/lm-sys.github.io@2db4e404:blog/2025-05-05-large-scale-ep.md"
LMSYS_GB200_1 = "lm-sys/lm-sys.github.io@00766f6b:blog/2025-06-16-gb200-part-1.md"
LMSYS_GB200_2 = "lm-sys/lm-sys.github.io@0f320187:blog/2025-09-25-gb200-part-2.md"
LMSYS_GB300 = "lm-sys/lm-sys.github.io@5b8a5044:blog/2025-02-19-gb300-longctx.md"


@dataclass(frozen=True)
class Figure:
    what: str
    source: str
    query: dict
    measured: float  # tokens/s per ``per``
    kind: str  # 'decode' (output tokens/s) | 'prefill' (input tokens/s) | 'mixed'
    per: str  # 'node' (8 chips) | 'gpu'


def _decode(ctx: int) -> dict:
    return {"input_len": 1, "output_len": 2 * ctx}


def _prefill(prompt: int) -> dict:
    return {"input_len": prompt, "output_len": 1}


DS = {"model": "deepseek-r1"}
FIGURES = [
    Figure("DeepSeek production decode, H800 (as H100), EP144, ctx 4989, 20-22 tok/s/user",
           DS_DAY6, {**DS, "accelerator": "h100-sxm", "count": 144, "precision": "fp8",
                     "engine": "sglang", "ep": 144, "dp": 144, "slo_tpot": 1 / 21,
                     **_decode(4989)}, 14800, "decode", "node"),
    Figure("SGLang DeepSeek-V3 decode, 9x8 H100, EP72, 2000-token inputs",
           LMSYS_EP, {**DS, "accelerator": "h100-sxm", "count": 72, "precision": "fp8",
                      "engine": "sglang", "ep": 72, "dp": 72, **_decode(2000)},
           22282, "decode", "node"),
    Figure("SGLang DeepSeek-V3 prefill, 4x8 H100, EP32, 1000-token prompts",
           LMSYS_EP, {**DS, "accelerator": "h100-sxm", "count": 32, "precision": "fp8",
                      "engine": "sglang", "ep": 32, "dp": 32, **_prefill(1000)},
           57674, "prefill", "node"),
    Figure("SGLang DeepSeek-V3 prefill, 4x8 H100, EP32, 2000-token prompts",
           LMSYS_EP, {**DS, "accelerator": "h100-sxm", "count": 32, "precision": "fp8",
                      "engine": "sglang", "ep": 32, "dp": 32, **_prefill(2000)},
           54543, "prefill", "node"),
    Figure("SGLang DeepSeek-V3 prefill, 4x8 H100, EP32, 4096-token prompts",
           LMSYS_EP, {**DS, "accelerator": "h100-sxm", "count": 32, "precision": "fp8",
                      "engine": "sglang", "ep": 32, "dp": 32, **_prefill(4096)},
           50302, "prefill", "node"),
    Figure("SGLang DeepSeek decode on GB200 NVL72 (FP8), 2000-token inputs, per GPU",
           LMSYS_GB200_1, {**DS, "accelerator": "gb200", "count": 48, "precision": "fp8",
                           "engine": "sglang", "ep": 48, "dp": 48, **_decode(2000)},
           7583, "decode", "gpu"),
    Figure("SGLang DeepSeek decode on GB200 NVL72, NVFP4 MoE + FP8 attention, 48 ranks",
           LMSYS_GB200_2, {**DS, "accelerator": "gb200", "count": 48, "precision": "fp4",
                           "engine": "sglang", "ep": 48, "dp": 48, **_decode(2000)},
           13386, "decode", "gpu"),
    Figure("SGLang DeepSeek decode on GB200 NVL72, FP8 MoE + BF16 attention, 48 ranks",
           LMSYS_GB200_2, {**DS, "accelerator": "gb200", "count": 48, "precision": "fp8",
                           "kv_precision": "bf16", "engine": "sglang", "ep": 48, "dp": 48,
                           **_decode(2000)}, 9087, "decode", "gpu"),
    Figure("SGLang DeepSeek prefill on GB200, NVFP4 MoE, 2 ranks per instance",
           LMSYS_GB200_2, {**DS, "accelerator": "gb200", "count": 4, "precision": "fp4",
                           "engine": "sglang", "ep": 4, "dp": 4, **_prefill(2000)},
           26156, "prefill", "gpu"),
    Figure("SGLang DeepSeek prefill on GB200, FP8 MoE, 4 ranks per instance",
           LMSYS_GB200_2, {**DS, "accelerator": "gb200", "count": 4, "precision": "fp8",
                           "engine": "sglang", "ep": 4, "dp": 4, **_prefill(2000)},
           18471, "prefill", "gpu"),
    Figure("DeepSeek-R1 NVFP4 128K/8K on GB300 NVL72, P/D, MTP off, TPS/GPU (colocated here)",
           LMSYS_GB300, {**DS, "accelerator": "gb300", "count": 72, "precision": "fp4",
                         "engine": "sglang", "input_len": 131072, "output_len": 8192,
                         "data_parallel": True},  # the rack runs several instances
           226.2, "mixed", "gpu"),
    Figure("DeepSeek-R1 NVFP4 128K/8K on GB200 NVL72, P/D, MTP off, TPS/GPU (colocated here)",
           LMSYS_GB300, {**DS, "accelerator": "gb200", "count": 72, "precision": "fp4",
                         "engine": "sglang", "input_len": 131072, "output_len": 8192,
                         "data_parallel": True},  # the rack runs several instances
           147.9, "mixed", "gpu"),
]


def predicted(f: Figure, catalog) -> tuple[float, str]:  # noqa: ANN001 - Catalog
    e = estimate(Query(**f.query), catalog)
    if not e.fits or not e.output_tokens_per_s or not e.requests_per_s:
        return float("nan"), e.reason or "does not fit"
    rate = (e.requests_per_s * f.query["input_len"] if f.kind == "prefill"
            else e.output_tokens_per_s)
    units = f.query["count"] / 8 if f.per == "node" else f.query["count"]
    lay = e.layout.short if e.layout else "tp1"
    return rate / units, f"{lay}, {e.provenance}"


def main() -> None:
    cat = load_catalog()
    print("# sanity: estimate vs public headline figures not in the calibration set\n")
    print(f"{'figure':<84} {'per':<4} {'measured':>9} {'predicted':>10} {'pred/meas':>9}  "
          "layout, trust")
    ratios = []
    for f in FIGURES:
        v, note = predicted(f, cat)
        r = v / f.measured
        ratios.append(r)
        print(f"{f.what[:84]:<84} {f.per:<4} {f.measured:>9,.0f} {v:>10,.0f} {r:>9.2f}  {note}")
        print(f"    source: {f.source}")
    x = np.asarray(ratios)
    ok = x[np.isfinite(x)]
    print(f"\n{len(ok)} of {len(x)} answered; pred/meas median {np.median(ok):.2f}, "
          f"range {ok.min():.2f}-{ok.max():.2f}, median |error| {np.median(np.abs(ok - 1)):.0%}")


if __name__ == "__main__":
    main()
