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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenfleet.catalog.loader import Catalog

DATA_FILE = "published_measurements.csv"
# More measurements in new regimes (MoE/MLA, attention-DP, MLPerf v5.1), with the layout
# and batching each source states (columns tp, pp, ep, dp, batching).
EXTRA_FILE = "published_measurements_extra.csv"
DATA_FILES = (DATA_FILE, EXTRA_FILE)

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
    "mlperf_v51_precision": (
        "MLPerf v5.1 summaries do not state precision: NVIDIA Blackwell submissions are taken "
        "as FP4 (NVFP4, as NVIDIA described them), AMD MI300X/MI325X as FP8, MI355X as FP4"
    ),
    "mlperf_interactive": (
        "MLPerf Interactive throughput (llama2-70b) is modelled as the highest throughput "
        "with mean TTFT <= 0.45 s and mean TPOT <= 0.04 s (the benchmark bounds p99)"
    ),
    "trtllm_attention_dp": (
        "TensorRT-LLM rows stating tp=N with attention DP and ep: attention runs dp-wide "
        "(tp = N / dp), experts over ep, as the engine runs them"
    ),
    "per_user_speed": "tokens/s per user at concurrency 1 is 1 / TPOT",
    "mlperf_system": (
        "MLPerf figures are a system's: the rules fix neither the engine instances nor "
        "their layout, so they are asked with data_parallel=True (replicas of any layout "
        "engines run count as one unit); every other source's figure is one engine "
        "instance over the stated chips"
    ),
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
    "GB300": "gb300",
    "MI325X": "mi325x",
    "MI355X": "mi355x",
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
    pp: int | None = None
    ep: int | None = None
    dp: int | None = None
    batching: str | None = None  # None: the engine's default
    file: str = DATA_FILE
    # The figure is a whole system's: the submitter's harness runs as many engine
    # instances (replicas) over the chips as it likes (MLPerf; see ASSUMPTIONS).
    system: bool = False

    @property
    def key(self) -> str:
        """Unique id of the row: file and 1-based data row."""
        return f"{self.file}:{self.row}"

    @property
    def source_name(self) -> str:
        """The source without its path inside the repository's results tree: rows of
        one publication (one MLPerf round of one submitter, one docs page) group together."""
        s = self.source.split(":")[0]
        return s.split("@")[0]

    def query_fields(self, stated_layout: bool = True) -> dict:
        """The :class:`tokenfleet.perf.estimate.Query` fields that ask for this figure:
        the measured setup, with the layout the source states (``stated_layout``) or
        none (the tool picks, as a user would ask)."""
        q: dict = dict(model=self.model, accelerator=self.accelerator, count=self.n_accel,
                       precision=self.precision, kv_precision=self.kv_precision,
                       engine=self.engine, input_len=self.input_len,
                       output_len=self.output_len, batching=self.batching)
        if self.mode in ("concurrency", "static"):
            q["concurrency"] = self.concurrency or 1
            if self.mode == "static":
                q["batching"] = "static"
        elif self.mode == "slo":
            q["slo_ttft"], q["slo_tpot"] = self.slo_ttft, self.slo_tpot
        if self.system:
            # A deployment fact the source states, like its batching (not a layout): the
            # figure is a system's, served by as many engine instances as the submitter
            # chose; a user asks it with ``data_parallel=True``.
            q["data_parallel"] = True
        if stated_layout:
            for k in ("tp", "pp", "ep", "dp"):
                if getattr(self, k):
                    q[k] = getattr(self, k)

        return q


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
        return ("fp4", "fp8") if accel in FP4_MLPERF else ("fp8", "fp8")
    if "deepseek-v3 checkpoint" in t or "deepgemm" in t:
        return "fp8", "bf16"  # DeepSeek's native FP8 weights; SGLang's default BF16 KV
    return "bf16", "bf16"


# MLPerf submissions taken as FP4 (see ASSUMPTIONS): Blackwell and MI355X.
FP4_MLPERF = frozenset({"B200", "GB200", "GB300", "MI355X"})


def _int(s: str | None) -> int | None:
    return int(float(s)) if s and s.strip() else None


def data_path(name: str = DATA_FILE) -> Path:
    return Path(str(resources.files("tokenfleet.perf.data").joinpath(name)))


def _layout_stated(r: dict[str, str], scenario: str, n: int) -> dict[str, int | None]:
    tp = _int(r.get("tp"))
    if tp is None:
        if m := re.search(r"TP=(\d+)\s*NeuronCores", scenario):
            tp = int(m.group(1)) // 2
        elif m := re.search(r"TP=(\d+)", scenario):
            tp = int(m.group(1))
    pp, ep, dp = _int(r.get("pp")), _int(r.get("ep")), _int(r.get("dp"))
    if tp and dp and tp * dp > n:  # TRT-LLM's "tp N + attention DP": attention is dp-wide
        tp = max(n // dp, 1)
    if tp and pp is None and (dp or 1) * tp == n:
        pp = 1
    return {"tp": tp, "pp": pp, "ep": ep, "dp": dp}


# MLPerf scenarios: (metric, SLO as mean bounds (TTFT s, TPOT s) or None for offline).
MLPERF = {"offline_tokens_per_s": None, "server_tokens_per_s": (2.0, 0.2),
          "interactive_tokens_per_s": (0.45, 0.04)}
SKIP_METRICS = {
    "prefill_input_tokens_per_s": "disaggregated prefill-only deployment (in the sanity "
                                  "table, benchmarks/sanity.py)",
    "decode_output_tokens_per_s": "disaggregated decode-only deployment (sanity table)",
    "tps_per_gpu": "disaggregated P/D with MTP options (sanity table)",
    "total_tokens_per_s": "input+output total: redundant with the output figure of the run",
}


def _kind(i: int, r: dict[str, str], engine: str, scenario: str
          ) -> tuple[str, str, tuple[float, float] | None] | Excluded:
    """(mode, metric kind, SLO) of a row, or why it is left out."""
    metric = r["metric"]
    if "MTP on" in scenario or "MTP on" in r.get("notes", "") or "SIMULATED" in scenario:
        return Excluded(i, "speculative decoding (MTP) or simulated figure: not modelled")
    if metric in SKIP_METRICS:
        return Excluded(i, SKIP_METRICS[metric])
    if metric in MLPERF:
        if not r["model"].startswith(("llama2-70b", "llama-2-70b")):
            return Excluded(i, "MLPerf data set mean lengths unknown for this benchmark")
        slo = MLPERF[metric]
        return ("offline" if slo is None else "slo"), "throughput", slo
    if metric in ("ttft_mean", "tpot_mean") and "MLPerf" in scenario:
        return Excluded(i, "MLPerf latency means at an unstated load: not a fixed operating point")
    if metric == "total_output_tokens_per_s":
        return "offline", "throughput", None
    if engine == "jetstream":
        return Excluded(i, "JetStream ShareGPT run: only length caps (1024/1024) are given, "
                           "actual mean lengths unknown; and 'tokens/s' may count input")
    kinds = {"output_tokens_per_s": "throughput", "ttft_p50": "ttft", "tpot_p50": "tpot",
             "ttft_mean": "ttft", "tpot_mean": "tpot", "e2e_latency": "e2e",
             "output_tokens_per_s_per_user": "tpot"}
    if metric in kinds:
        if "ShareGPT" in scenario:
            return Excluded(i, "ShareGPT lengths vary; mean lengths not stated")
        return ("static" if engine == "neuron" else "concurrency"), kinds[metric], None
    return Excluded(i, f"metric {metric}: redundant with the p50/output-token figures")


def _value(r: dict[str, str], kind: str) -> float:
    value = float(r["value"])
    unit = r["unit"].strip()
    if unit == "ms" or unit.startswith("ms "):
        value /= 1e3
    elif unit == "ns":
        value /= 1e9
    if r["metric"] == "output_tokens_per_s_per_user":
        value = 1.0 / value  # per-user decode speed at concurrency 1 = 1 / TPOT
    return value


def _row(i: int, r: dict[str, str], file: str) -> Point | Excluded:
    scenario = r["scenario"]
    accel = ACCEL_IDS.get(r["accelerator"])
    if accel is None:
        return Excluded(i, f"accelerator {r['accelerator']} not in catalog")
    n = _int(r["n_accel"])
    if n is None:
        return Excluded(i, "chip count not stated")
    try:
        engine = _engine(r["framework"])
    except ValueError:
        return Excluded(i, f"engine {r['framework']!r} not modelled")
    kind = _kind(i, r, engine, scenario)
    if isinstance(kind, Excluded):
        return kind
    mode, metric, slo = kind
    precision, kv = _precision(r["precision"], r["accelerator"], scenario)
    inp, out = _int(r["input_len"]), _int(r["output_len"])
    if r["metric"] in MLPERF:
        inp, out = 300, 265  # llama2-70b OpenOrca (ASSUMPTIONS['mlperf_lengths'])
    if inp is None or out is None:
        return Excluded(i, "input/output lengths not given")
    lay = _layout_stated(r, scenario, n)
    return Point(
        row=i, model=r["model"], accelerator=accel, n_accel=n, precision=precision,
        kv_precision=kv, engine=engine, mode=mode, input_len=inp, output_len=out,
        concurrency=_int(r["concurrency"]), tp=lay["tp"], slo_ttft=slo[0] if slo else None,
        slo_tpot=slo[1] if slo else None, metric=metric, value=_value(r, metric),
        source=r["source"], pp=lay["pp"], ep=lay["ep"], dp=lay["dp"],
        batching=(r.get("batching") or None), file=file, system=r["metric"] in MLPERF)


def _beyond_context(p: Point, catalog: Catalog) -> Excluded | None:
    """A row whose lengths exceed the model's catalog context cannot be asked through
    ``estimate`` (which refuses such queries, as a server would); the source ran the
    model with extended positions (e.g. Neuron ``n_positions`` 8192 for Llama-2-7B)."""
    ctx = catalog.model(p.model).max_context_tokens
    if ctx is not None and p.input_len + p.output_len > ctx:
        return Excluded(p.row, f"{p.file}: input {p.input_len} + output {p.output_len} "
                               f"tokens is beyond {p.model}'s catalog context of {ctx}: "
                               "estimate refuses the query")
    return None


def load_points(path: Path | None = None, catalog: Catalog | None = None
                ) -> tuple[list[Point], list[Excluded]]:
    """Read the measurement CSVs (``path`` alone when given) and map every row to a
    :class:`Point` or an :class:`Excluded` (also rows beyond the model's context in
    ``catalog``, default the bundled one)."""
    from tokenfleet.catalog.loader import load_catalog

    cat = catalog or load_catalog()
    points: list[Point] = []
    excluded: list[Excluded] = []
    files = [path] if path else [data_path(f) for f in DATA_FILES if data_path(f).exists()]
    for f in files:
        with open(f, newline="") as fh:
            for i, r in enumerate(csv.DictReader(fh), start=1):
                got = _row(i, r, f.name)
                if isinstance(got, Point):
                    beyond = _beyond_context(got, cat)
                    if beyond is None:
                        points.append(got)
                    else:
                        excluded.append(beyond)
                else:
                    excluded.append(got)
    return points, excluded
