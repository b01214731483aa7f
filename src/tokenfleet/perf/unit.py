"""Roofline model of one serving unit: a model replica set on ``count`` chips of one kind.

Units: seconds, bytes, FLOPs, tokens; rates per second. Metric definitions (used
everywhere in tokenfleet, see ``tokenfleet.perf.metrics``):

* TTFT — from a request's arrival to its first output token.
* TPOT — mean time between output tokens *after* the first.
* throughput — output tokens per second of the whole unit, unless named otherwise.

A step costs ``max(compute, memory) + communication + fixed overhead`` per pipeline
stage, with achieved fractions of peak FLOP/s and HBM bandwidth (:class:`Efficiency`)
fitted to published measurements (``tokenfleet.perf.calibration``).

Continuous batching with chunked prefill, in steady state at concurrency C per
replica: every engine iteration advances each of the C sequences by one token and
admits C / O new requests, whose prompts (C / O * I tokens) ride in the same step, so
the weights are streamed once for both::

    t_iter     = step(decode C tokens at context I + O/2, prefill C*I/O tokens)
    throughput = C / t_iter          TPOT = t_iter
    TTFT       = t_iter / 2 + step(decode C tokens, prefill I tokens)

(TTFT: wait for the running iteration, then one step that carries the whole prompt.)
With pipeline parallelism the C sequences travel as pp micro-batches, so an iteration
is pp stage steps of C / pp tokens each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tokenfleet.catalog.schema import Accelerator, ModelSpec
from tokenfleet.perf import architecture as arch
from tokenfleet.perf.precision import ACTIVATION_BYTES, Precision, kv_bytes

# Fraction of HBM an engine hands to weights + KV cache (vLLM's default
# gpu_memory_utilization is 0.9; TRT-LLM's free_gpu_memory_fraction default is 0.9 of
# what is left after weights, about the same here). The rest is runtime, allocator slack.
MEMORY_FRACTION = 0.9
# Engines cap the running batch (vLLM max_num_seqs, TRT-LLM max_batch_size); a replica
# never runs more sequences than this even when KV memory would allow it.
MAX_BATCH_PER_REPLICA = 1024
# Tokens in one prefill chunk: sizes the activation workspace reserved next to the KV cache.
PREFILL_CHUNK_TOKENS = 8192


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of peak, fitted per chip family and engine.

    Prefill time is set mostly by ``compute`` (large GEMMs) and ``attention`` (flash
    attention over long prompts); decode time mostly by ``bandwidth`` (streaming the
    weights) and ``kv_bandwidth`` (paged-attention reads of the KV cache, which reach a
    different fraction of peak than large sequential weight reads).
    """

    compute: float  # GEMM FLOP/s as a fraction of the dense peak of the compute dtype
    attention: float  # attention-kernel FLOP/s as a fraction of the same peak
    bandwidth: float  # weight streaming, fraction of peak HBM bandwidth
    kv_bandwidth: float  # KV-cache reads, fraction of peak HBM bandwidth
    moe: float  # expert GEMMs (grouped, routed) relative to dense GEMMs
    overhead_us_per_layer: float  # fixed cost per layer per step (launch, sync, scheduling)


class Layout(BaseModel):
    """Parallelism of a unit: ``tp * pp * dp`` chips; ``ep`` spreads experts (MoE only).
    The one layout type of tokenfleet: queries, estimates and plan units carry it, and
    in JSON/YAML it is ``{tp, pp, ep, dp}`` (each defaults to 1).

    ``ep == 1``: every replica holds all experts, tensor-split over its tp chips.
    ``ep == tp * dp``: attention is data-parallel over dp replicas, the experts of a
    pipeline stage are spread over all of its tp*dp chips (DeepSeek-style serving).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tp: int = Field(1, ge=1, description="tensor-parallel chips")
    pp: int = Field(1, ge=1, description="pipeline stages")
    ep: int = Field(1, ge=1, description="chips the experts are spread over (MoE)")
    dp: int = Field(1, ge=1, description="data-parallel engine instances in the unit")

    def __init__(self, tp: int = 1, pp: int = 1, dp: int = 1, ep: int = 1) -> None:
        # positional (tp, pp, dp, ep), as the layout search builds them
        super().__init__(tp=tp, pp=pp, dp=dp, ep=ep)

    @property
    def chips(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def short(self) -> str:
        """The dimensions above 1 (``tp4 dp2``), ``tp1`` for one chip."""
        return " ".join(f"{k}{v}" for k, v in self.model_dump().items() if v > 1) or "tp1"

    def __str__(self) -> str:
        s = f"tp{self.tp}"
        if self.pp > 1:
            s += f"·pp{self.pp}"
        if self.ep > 1:
            s += f"·ep{self.ep}"
        if self.dp > 1:
            s += f"·dp{self.dp}"
        return s


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@lru_cache(maxsize=4096)
def layouts_for(model: ModelSpec, count: int) -> list[Layout]:
    """Every layout of ``count`` chips worth considering for ``model``.

    Pipeline depth is limited to powers of two up to 8: deeper pipelines only add
    latency for serving, and the search stays small."""
    out = []
    for tp in _divisors(count):
        if tp > model.num_attention_heads:
            continue
        for pp in _divisors(count // tp):
            if pp > min(model.num_layers, 8) or pp & (pp - 1):
                continue
            dp = count // (tp * pp)
            out.append(Layout(tp, pp, dp, 1))
            if model.is_moe and tp * dp > 1 and model.num_experts >= tp * dp:
                out.append(Layout(tp, pp, dp, tp * dp))
    return out


@dataclass(frozen=True)
class MemoryFit:
    """Per-chip memory budget of one layout (bytes), and the concurrency it allows."""

    weights_per_chip: float
    workspace_per_chip: float
    kv_budget_per_chip: float
    kv_per_seq_per_chip: float  # at the length the engine holds per sequence
    kv_per_token_unit: float  # bytes of KV one token costs summed over a replica's chips
    max_concurrency: int  # whole unit (all dp replicas)
    fits: bool
    reason: str


class UnitModel:
    """Physics of one (model, chip, precision, layout) with given efficiencies.

    Precomputes everything that does not depend on the batch so that step times can
    be evaluated over NumPy arrays of batch sizes.
    """

    def __init__(
        self,
        model: ModelSpec,
        accel: Accelerator,
        precision: Precision,
        kv_precision: str,
        layout: Layout,
        eff: Efficiency,
    ) -> None:
        self.model, self.accel, self.precision, self.layout, self.eff = (
            model,
            accel,
            precision,
            layout,
            eff,
        )
        self.kv_precision = kv_precision
        m, lo = model, layout
        pc = arch.param_counts(m)
        wb = precision.weight_bytes
        peak = accel.peak_tflops(precision.compute)
        self.peak_flops = (peak or 0.0) * 1e12
        self.hbm_bw = accel.hbm_tbps * 1e12

        self.n_moe_layers = arch.moe_layer_count(m)
        # Dense-path parameters every token multiplies with (per replica).
        lm_head = pc.embedding if pc.tied_embeddings else pc.embedding // 2
        self.p_dense_active = pc.attention + pc.dense_mlp + pc.shared + lm_head
        self.p_expert_active = pc.experts_active
        self.one_expert_params = (
            arch.mlp_params(m.hidden_size, m.moe_intermediate_size or 0, m.gated_mlp)
            if m.is_moe
            else 0
        )
        # Heads that do not divide evenly over tp are padded: the busiest chip sets the pace.
        self.head_pad = math.ceil(m.num_attention_heads / lo.tp) * lo.tp / m.num_attention_heads
        expert_split = lo.ep if lo.ep > 1 else lo.tp
        self.expert_split = expert_split
        self.weights_per_chip = (
            (pc.non_expert * wb) / (lo.tp * lo.pp) + (pc.experts * wb) / (expert_split * lo.pp)
        )
        # Bytes every step streams: all non-expert weights except the input embedding
        # table, of which a step reads only the looked-up rows.
        read_params = pc.non_expert - (0 if pc.tied_embeddings else pc.embedding // 2)
        self.non_expert_bytes_per_chip = read_params * wb / (lo.tp * lo.pp)

        # KV bytes per cached token per layer on one chip.
        kvb = kv_bytes(kv_precision)
        if m.is_mla:
            # The latent is shared by all heads, so every TP rank keeps all of it.
            self.kv_tok_layer_chip = arch.kv_elements_per_token_layer(m) * kvb
            kv_replication: float = lo.tp
        else:
            kv_heads_chip = math.ceil(m.num_kv_heads / lo.tp)
            self.kv_tok_layer_chip = 2 * kv_heads_chip * m.head_dim * kvb
            kv_replication = kv_heads_chip * lo.tp / m.num_kv_heads
        self.kv_bytes_per_elem = kvb
        self.kv_replication = kv_replication

        # Link bandwidths (one direction, bytes/s) for the groups that talk.
        def uni(group: int) -> float:
            gbps = accel.scaleup_gbps if group <= accel.scaleup_domain else accel.scaleout_gbps
            return gbps / 2 * 1e9

        self.tp_bw = uni(lo.tp)
        self.ep_bw = uni(lo.ep)
        self.pp_bw = uni(lo.tp * lo.pp)
        self.layers_per_stage = m.num_layers / lo.pp
        self._precompute_step()

    # ---- memory -------------------------------------------------------------------

    def kv_seq_bytes_per_chip(self, seq_len: float) -> float:
        """KV bytes one sequence of ``seq_len`` tokens occupies on one chip of a stage."""
        # Sum over layers of tokens kept (sliding layers keep at most the window).
        token_layers = arch.attended_tokens(self.model, seq_len)
        return token_layers / self.layout.pp * self.kv_tok_layer_chip

    def memory(self, input_len: int, output_len: int, reserve_full: bool = False) -> MemoryFit:
        """Per-chip memory budget and the concurrency it allows.

        ``reserve_full``: the engine admits a request only when KV for its whole length
        fits (TensorRT-LLM's default GUARANTEED_NO_EVICT scheduler); otherwise admission
        follows current use (vLLM, SGLang), which averages I + O/2 tokens per sequence.
        """
        m, lo = self.model, self.layout
        hbm = self.accel.hbm_gb * 1e9
        workspace = PREFILL_CHUNK_TOKENS * (
            4 * m.hidden_size + 2 * m.intermediate_size / lo.tp
        ) * ACTIVATION_BYTES
        budget = hbm * MEMORY_FRACTION - self.weights_per_chip - workspace
        held_len = input_len + (output_len if reserve_full else output_len / 2)
        per_seq = self.kv_seq_bytes_per_chip(held_len)
        full_seq = self.kv_seq_bytes_per_chip(input_len + output_len)
        kv_per_token_unit = (
            self.kv_seq_bytes_per_chip(1.0) * lo.tp * lo.pp
        )
        if self.weights_per_chip > hbm * MEMORY_FRACTION - workspace:
            need = (self.weights_per_chip + workspace) / MEMORY_FRACTION / 1e9
            return MemoryFit(self.weights_per_chip, workspace, budget, per_seq, kv_per_token_unit,
                             0, False,
                             f"weights need {self.weights_per_chip / 1e9:.1f} GB per chip with "
                             f"{lo}; {self.accel.id} has {self.accel.hbm_gb:g} GB "
                             f"(needs ≥ {need:.0f} GB at {MEMORY_FRACTION:.0%} usable)")
        if full_seq > budget:
            return MemoryFit(self.weights_per_chip, workspace, budget, per_seq, kv_per_token_unit,
                             0, False,
                             f"one sequence of {input_len + output_len} tokens needs "
                             f"{full_seq / 1e9:.2f} GB of KV per chip; "
                             f"{max(budget, 0) / 1e9:.2f} GB left after weights")
        per_replica = min(int(budget // per_seq), MAX_BATCH_PER_REPLICA)
        return MemoryFit(self.weights_per_chip, workspace, budget, per_seq, kv_per_token_unit,
                         per_replica * lo.dp, True, "")

    # ---- time ---------------------------------------------------------------------

    def step_s(
        self,
        decode_tokens: np.ndarray,
        context: float,
        prefill_tokens: np.ndarray | float = 0.0,
        prompt_len: int = 1,
    ) -> np.ndarray:
        """Seconds for one pipeline stage to run one engine step (per chip view).

        The step carries ``decode_tokens`` decode tokens at mean ``context`` and
        ``prefill_tokens`` prompt tokens of prompts ``prompt_len`` long (chunked
        prefill mixes both; the weights are streamed once for the whole step).
        Every term is linear in the token counts except the MoE expert reads, so the
        per-token coefficients are scalars and the arrays see a handful of operations.
        """
        lo, m, eff = self.layout, self.model, self.eff
        dec = np.asarray(decode_tokens, dtype=float)
        pre = np.asarray(prefill_tokens, dtype=float)
        tokens = dec + pre
        # Decode attention is a KV-cache read (costed below); its few FLOPs run with the
        # GEMMs. Prefill attention is compute-bound flash attention with its own factor.
        attn_dec = arch.attention_flops_per_token(m, context) * self.attn_scale
        attn_pre = (arch.prefill_attention_flops(m, prompt_len) / max(prompt_len, 1)
                    * self.attn_scale)
        sec_per_flop = 1.0 / self.peak_flops
        t_compute = (tokens * (self.matmul_flops * sec_per_flop / eff.compute)
                     + dec * (attn_dec * sec_per_flop / eff.compute)
                     + pre * (attn_pre * sec_per_flop / eff.attention))
        kv_per_dec = self.kv_seq_bytes_per_chip(context) / (eff.kv_bandwidth * self.hbm_bw)
        t_memory = self.weights_s + dec * kv_per_dec
        if self.n_moe_layers:
            e, k = m.num_experts, m.experts_per_token
            routed = tokens * (lo.dp if lo.ep > 1 else 1)
            # Distinct experts the step's tokens touch per layer, with uniform routing.
            touched = e * (1.0 - (1.0 - k / e) ** routed)
            t_memory = t_memory + touched * self.expert_s
        return np.maximum(t_compute, t_memory) + tokens * self.comm_s_per_token + self.fixed_s

    def _precompute_step(self) -> None:
        """Batch-independent coefficients of :meth:`step_s` (seconds, FLOPs per token)."""
        lo, m, eff = self.layout, self.model, self.eff
        tp_pp = lo.tp * lo.pp
        # Expert GEMMs are grouped and routed: they get their own relative efficiency.
        self.matmul_flops = 2.0 * (self.p_dense_active + self.p_expert_active / eff.moe) / tp_pp
        self.attn_scale = self.head_pad / tp_pp
        self.weights_s = self.non_expert_bytes_per_chip / (eff.bandwidth * self.hbm_bw)
        self.expert_s = (self.one_expert_params * self.precision.weight_bytes
                         * self.n_moe_layers / lo.pp / self.expert_split
                         / (eff.bandwidth * self.hbm_bw))
        act = m.hidden_size * ACTIVATION_BYTES  # bytes per token crossing a link
        comm = 0.0
        if lo.tp > 1:  # two all-reduces per layer (attention out, MLP out), ring algorithm
            comm += 2 * self.layers_per_stage * 2 * (lo.tp - 1) / lo.tp * act / self.tp_bw
        if lo.ep > 1 and self.n_moe_layers:  # dispatch + combine all-to-all per MoE layer
            sent = act / lo.tp * m.experts_per_token * 2 * (lo.ep - 1) / lo.ep
            comm += self.n_moe_layers / lo.pp * sent / self.ep_bw
        if lo.pp > 1:
            comm += act / self.pp_bw
        self.comm_s_per_token = comm
        self.fixed_s = eff.overhead_us_per_layer * 1e-6 * self.layers_per_stage

    # ---- operating points -----------------------------------------------------------

    def continuous(self, concurrency: np.ndarray, input_len: int, output_len: int
                   ) -> dict[str, np.ndarray]:
        """Steady-state continuous batching with chunked prefill at ``concurrency``
        sequences per unit (see the module docstring)."""
        lo = self.layout
        c = np.maximum(np.asarray(concurrency, dtype=float) / lo.dp, 1.0)
        o = max(output_len, 1)
        ctx = input_len + o / 2
        micro = np.maximum(c / lo.pp, 1.0)
        # Each iteration admits c / o new requests, whose prompts ride along.
        t_iter = lo.pp * self.step_s(micro, ctx, micro / o * input_len, input_len)
        t_prompt = lo.pp * self.step_s(micro, ctx, float(input_len), input_len)
        return {
            "ttft_s": t_iter / 2 + t_prompt,
            "tpot_s": t_iter,
            "output_tokens_per_s": c / t_iter * lo.dp,
            "concurrency": c * lo.dp,
        }

    def static(self, batch: int, input_len: int, output_len: int) -> dict[str, float]:
        """Static batching (all sequences start and end together), per replica of ``batch``."""
        lo = self.layout
        one = np.asarray([0.0])
        ttft = float(self.step_s(one, 0.0, float(batch * input_len), input_len)[0]) * lo.pp
        micro = np.asarray([max(batch / lo.pp, 1.0)])
        tpot = float(self.step_s(micro, input_len + output_len / 2)[0]) * lo.pp
        total = ttft + max(output_len - 1, 0) * tpot
        return {
            "ttft_s": ttft,
            "tpot_s": tpot,
            "output_tokens_per_s": batch * output_len / total * lo.dp,
            "concurrency": float(batch * lo.dp),
        }
