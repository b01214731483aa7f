"""How each serving engine runs a unit: batching, caps, attention-DP, memory policy.

These are the engines' documented defaults (each with its source); a measurement or a
user query may override the batching. Numbers are per engine instance (one dp rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Batching = Literal["static", "continuous"]


@dataclass(frozen=True)
class EngineProfile:
    name: str
    batching: Batching  # default batching mode
    max_num_seqs: int  # running sequences per engine instance
    max_num_batched_tokens: int  # token budget of one step (chunked prefill)
    attention_dp: bool  # runs attention data-parallel with expert-parallel MoE
    reserve_full: bool  # admits a request only when KV for its whole length fits
    # KV pool = kv_fraction * (HBM - weights - runtime) when ``kv_of_free`` (TRT-LLM's
    # kv_cache_free_gpu_memory_fraction), else memory_fraction * HBM - weights - runtime
    # (vLLM's gpu_memory_utilization, SGLang's mem_fraction_static).
    memory_fraction: float
    kv_of_free: bool
    source: str
    # Hides the expert all-to-all under the math of another micro-batch (SGLang's
    # --enable-two-batch-overlap, TRT-LLM's attention-DP overlap scheduler).
    overlaps_a2a: bool = False
    # Whether a unit of this engine, run with its defaults, is several data-parallel
    # replicas of the whole model (dense, or MoE without expert parallelism). No engine's
    # default is: vLLM's --data-parallel-size and SGLang's --dp-size default to 1 (one
    # instance, the chips split by --tensor-parallel-size / --tp, as their benchmark
    # recipes run), TensorRT-LLM's data parallelism is attention-DP for MoE only (a dense
    # model runs --tp_size x --pp_size), Neuron and JetStream compile one model over all
    # the cores given. More copies are the planner's replicas; a query asks for them with
    # --dp or ``data_parallel=True`` (a system of instances behind one load balancer).
    replicas: bool = False


ENGINE_PROFILES: dict[str, EngineProfile] = {
    "vllm": EngineProfile(
        "vllm", "continuous", 1024, 8192, True, False, 0.90, False,
        "vllm-project/vllm vllm/engine/arg_utils.py (V1 defaults on >=70 GB GPUs: "
        "max_num_seqs 1024, max_num_batched_tokens 8192 for the API server; "
        "gpu_memory_utilization 0.9; --data-parallel-size with --enable-expert-parallel)"),
    "sglang": EngineProfile(
        "sglang", "continuous", 2048, 8192, True, False, 0.88, False,
        "sgl-project/sglang python/sglang/srt/server_args.py (chunked_prefill_size 8192, "
        "mem_fraction_static ~0.88 on 80-192 GB GPUs, --enable-dp-attention); "
        "max_running_requests is set from memory, 2048 is an assumed ceiling; "
        "two-batch overlap of the DeepEP all-to-all: lmsys.org blog 2025-05-05)", True),
    "trtllm": EngineProfile(
        "trtllm", "continuous", 2048, 8192, True, True, 0.90, True,
        "NVIDIA/TensorRT-LLM docs/source/performance/performance-tuning-guide "
        "(max_batch_size 2048, max_num_tokens 8192 defaults; "
        "kv_cache_free_gpu_memory_fraction 0.9; GUARANTEED_NO_EVICT scheduler; "
        "attention DP for MoE; overlap scheduler; no data parallelism for dense models)",
        True),
    "neuron": EngineProfile(
        "neuron", "static", 256, 8192, False, True, 0.90, False,
        "aws-neuron/aws-neuron-sdk transformers-neuronx: static batches compiled per "
        "batch size, KV slots allocated for the full sequence; one model over all the "
        "NeuronCores given (tp_degree)"),
    "jetstream": EngineProfile(
        "jetstream", "continuous", 256, 8192, False, True, 0.90, False,
        "AI-Hypercomputer/JetStream: fixed decode slots (assumed 256 per instance); one "
        "model sharded over the slice"),
}

DEFAULT_ENGINE = "vllm"  # a query that names no engine and has no calibration is run as vLLM


def engine_profile(name: str | None) -> EngineProfile:
    return ENGINE_PROFILES.get(name or DEFAULT_ENGINE, ENGINE_PROFILES[DEFAULT_ENGINE])
