"""Published serving measurements (``perf/data/published_measurements.csv``) as typed points.

Each CSV row is one figure a source reports. This module says, for every row, which
operating point of the model it corresponds to, or why it is left out. The mapping
choices that are interpretations (not printed in the source) are named in
``ASSUMPTIONS`` and echoed in every calibration report.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

DATA_FILE = "published_measurements.csv"

# Interpretations the source rows do not state; each is applied by a rule below.
ASSUMPTIONS = {
    "mlperf_precision": (
        "MLPerf v4.1 summaries do not state precision: NVIDIA H100/H200 and AMD MI300X "
        "Llama-2-70B submissions are taken as FP8, the B200 preview as FP4 (as the "
        "submitters described them)"
    ),
    "mlperf_lengths": (
        "MLPerf Llama-2-70B (OpenOrca): mean output 265 tokens (calibration README); mean "
        "input taken as 300 tokens (not in the data)"
    ),
    "mlperf_server": (
        "MLPerf Server throughput is modelled as the highest throughput with mean TTFT "
        "<= 2 s and mean TPOT <= 0.2 s (the benchmark bounds the 99th percentiles)"
    ),
    "neuron_layout": "Neuron rows: TP over NeuronCores / 2 chips (2 NeuronCores per chip)",
}

ENGINES = ("trtllm", "vllm", "sglang", "jetstream", "neuron")
# Engines whose scheduler admits a request only if KV for its full length fits
# (TensorRT-LLM's default GUARANTEED_NO_EVICT; static-batch Neuron and JetStream
# allocate whole cache slots); vLLM and SGLang admit by current use and preempt.
FULL_KV_RESERVATION = frozenset({"trtllm", "neuron", "jetstream"})

ACCEL_IDS = {
    "H100": "h100-sxm",
    "H200": "h200",
    "B200": "b200",
    "GB200": "gb200",
    "MI300X": "mi300x",
    "TPU-v5e": "tpu-v5e",
    "TPU-v6e": "tpu-v6e",
    "Trainium1": "trainium1",
    "Inferentia2": "inferentia2",
}


@dataclass(frozen=True)
class Point:
    """One measured figure mapped onto an operating point of the model.

    ``mode``: 'offline' (max throughput that fits), 'concurrency' (continuous batching
    at ``concurrency``), 'static' (static batch of ``concurrency``), 'slo' (max
    throughput under mean TTFT/TPOT bounds). ``metric``: 'throughput' (output tokens/s,
    whole system), 'ttft' or 'tpot' (seconds).
    """

    row: int  # 1-based data row in the CSV (header excluded)
    model: str
    accelerator: str
    n_accel: int
    precision: str
    kv_precision: str
    engine: str
    mode: str
    input_len: int
    output_len: int
    concurrency: int | None
    tp: int | None
    slo_ttft: float | None
    slo_tpot: float | None
    metric: str
    value: float  # SI: tokens/s or seconds
    source: str


@dataclass(frozen=True)
class Excluded:
    row: int
    reason: str


def _engine(framework: str) -> str:
    f = framework.lower()
    if "tensorrt" in f or "trt" in f:
        return "trtllm"
    if "jetstream" in f:
        return "jetstream"
    if "neuron" in f:
        return "neuron"
    if "sglang" in f:
        return "sglang"
    if "vllm" in f:
        return "vllm"
    raise ValueError(f"unknown framework {framework!r}")


def _precision(text: str, accel: str, scenario: str) -> tuple[str, str]:
    t = text.lower()
    if "fp4" in t:
        return "fp4", "fp8"
    if "fp8" in t:
        return "fp8", "fp8"
    if "weights int8" in t:
        return "int8", "bf16"
    if t.startswith("int8"):
        return "int8", "int8"
    if "not stated in summary" in t and "MLPerf" in scenario:
        return ("fp4", "fp8") if accel == "B200" else ("fp8", "fp8")
    return "bf16", "bf16"


def _int(s: str) -> int | None:
    return int(float(s)) if s.strip() else None


def data_path() -> Path:
    return Path(str(resources.files("tokenfleet.perf.data").joinpath(DATA_FILE)))


def load_points(path: Path | None = None) -> tuple[list[Point], list[Excluded]]:
    """Read the CSV and map every row to a :class:`Point` or an :class:`Excluded`."""
    points: list[Point] = []
    excluded: list[Excluded] = []
    with open(path or data_path(), newline="") as fh:
        for i, r in enumerate(csv.DictReader(fh), start=1):
            metric, unit, scenario = r["metric"], r["unit"], r["scenario"]
            accel = ACCEL_IDS.get(r["accelerator"])
            if accel is None:
                excluded.append(Excluded(i, f"accelerator {r['accelerator']} not in catalog"))
                continue
            engine = _engine(r["framework"])
            precision, kv = _precision(r["precision"], r["accelerator"], scenario)
            n = int(r["n_accel"])
            conc = _int(r["concurrency"])
            inp, out = _int(r["input_len"]), _int(r["output_len"])
            tp = None
            if m := re.search(r"TP=(\d+)\s*NeuronCores", scenario):
                tp = int(m.group(1)) // 2
            elif m := re.search(r"TP=(\d+)", scenario):
                tp = int(m.group(1))
            slo_ttft = slo_tpot = None

            if metric in ("offline_tokens_per_s", "server_tokens_per_s"):
                if not r["model"].startswith("llama2-70b"):
                    excluded.append(Excluded(i, "MLPerf GPT-J: dataset mean lengths unknown"))
                    continue
                inp, out = 300, 265
                mode = "offline" if metric.startswith("offline") else "slo"
                if mode == "slo":
                    slo_ttft, slo_tpot = 2.0, 0.2
                kind = "throughput"
            elif metric == "total_output_tokens_per_s":
                mode, kind = "offline", "throughput"
            elif engine == "jetstream":
                excluded.append(Excluded(
                    i, "JetStream ShareGPT run: only length caps (1024/1024) are given, "
                       "actual mean lengths unknown; and 'tokens/s' may count input"))
                continue
            elif metric in ("output_tokens_per_s", "ttft_p50", "tpot_p50"):
                mode = "static" if engine == "neuron" else "concurrency"
                kind = {"output_tokens_per_s": "throughput", "ttft_p50": "ttft",
                        "tpot_p50": "tpot"}[metric]
            else:
                excluded.append(Excluded(i, f"metric {metric}: redundant with the p50/"
                                            "output-token figures of the same run"))
                continue
            if inp is None or out is None:
                excluded.append(Excluded(i, "input/output lengths not given"))
                continue
            value = float(r["value"])
            if unit.strip() == "ms":
                value /= 1000.0
            points.append(Point(
                row=i, model=r["model"], accelerator=accel, n_accel=n, precision=precision,
                kv_precision=kv, engine=engine, mode=mode, input_len=inp, output_len=out,
                concurrency=conc, tp=tp, slo_ttft=slo_ttft, slo_tpot=slo_tpot,
                metric=kind, value=value, source=r["source"],
            ))
    return points, excluded
