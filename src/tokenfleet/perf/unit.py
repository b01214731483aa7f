"""Per-operator roofline of one serving unit: a model replica set on ``count`` chips.

Units: seconds, bytes, FLOPs, tokens; rates per second. Metric definitions (used
everywhere in tokenfleet, see ``tokenfleet.perf.metrics``):

* TTFT — from a request's arrival to its first output token.
* TPOT — mean time between output tokens *after* the first.
* throughput — output tokens per second of the whole unit, unless named otherwise.

One engine step of one pipeline stage is a **sum over operators**, each
``max(math / (eff * peak of its dtype), bytes / (eff * HBM bandwidth))``:

* dense GEMMs (QKV/O projections, dense MLP, shared experts, LM head for the tokens
  that sample) — math on the GEMM dtype's peak, weight bytes streamed once per step;
* MoE grouped GEMM — routed token-expert pairs, with an efficiency that falls when an
  expert sees few tokens (``tpe / (tpe + MOE_HALF_TOKENS)``), against the bytes of the
  experts the step touches;
* prefill attention — causal flash attention on the BF16 peak, MLA in its MHA form;
* decode attention — reading the KV cache (MLA in absorbed form: its math can bind);
* collectives — latency + bytes / link bandwidth (TP all-reduce, EP all-to-all with
  FP8 dispatch where the math is FP8, PP activation hand-off);
* a per-step host overhead (scheduling, sampling, launch gaps).

Efficiencies (:class:`Efficiency`) are physical fractions of peak, seeded from public
kernel benchmarks and refitted per (chip family, engine) as bounded residual factors
(``tokenfleet.perf.calibration``).

Continuous batching with chunked prefill, in steady state at ``c`` sequences per
engine instance (dp rank) and a token budget ``B`` per step: every iteration advances
each decoding sequence by one token and admits ``d / O`` new requests, whose prompt
tokens ride in the same steps (``d = min(c, B * O / (I + O))``: past that the budget,
not memory, limits how many sequences decode)::

    t_iter     = pp * step(decode d/pp, prefill d/pp * I/O)       TPOT = t_iter
    throughput = d / t_iter
    TTFT       = t_iter / 2 + ceil(I / chunk) * pp * step(decode d/pp, prefill chunk)

With pipeline parallelism the sequences travel as ``pp`` micro-batches, so the weights
are read once per micro-batch (the micro-batch cost) and the slowest stage, with
``ceil(layers / pp)`` layers, sets the pace (the bubble of an uneven split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tokenfleet.catalog.schema import Accelerator, ModelSpec
from tokenfleet.perf import architecture as arch
from tokenfleet.perf.engines import EngineProfile, engine_profile
from tokenfleet.perf.precision import ACTIVATION_BYTES, Precision, kv_bytes

# Engines cap the running batch (vLLM max_num_seqs, TRT-LLM max_batch_size); the
# default engine's cap (see ``tokenfleet.perf.engines``).
MAX_BATCH_PER_REPLICA = 1024
# Token budget of one step (vLLM max_num_batched_tokens, TRT-LLM max_num_tokens) of the
# default engine: sizes the activation workspace and the prefill chunk.
PREFILL_CHUNK_TOKENS = 8192

# Runtime memory per chip that neither weights nor KV can use (GB): CUDA/HIP context and
# allocator slack ~0.5-1 GB, NCCL/RCCL buffers ~0.5 GB, CUDA graphs 0.5-1.5 GB (vLLM
# logs "Graph capturing finished ... took 0.5-1.5 GiB" for 8B-70B models; vLLM docs,
# "Conserving memory"). XLA (TPU) and Neuron runtimes reserve less and capture no graphs.
RUNTIME_RESERVE_GB = {"gpu": 2.5, "tpu": 1.0, "asic": 1.5}
# Expert-parallel all-to-all buffers (DeepEP's default NVLink buffer is 1 GB per rank,
# deepseek-ai/DeepEP README; pplx-kernels similar).
EP_BUFFER_GB = 1.0
# Tokens per expert at which a grouped GEMM reaches half of its large-batch efficiency
# (an M=32 tile is half-empty on a 64-row MMA tile; CUTLASS grouped-GEMM benchmarks).
MOE_HALF_TOKENS = 32.0
# Latency of one collective (s): NVLink one-shot all-reduce and NVSHMEM all-to-all are
# ~5-10 µs for decode-sized messages (NCCL tests, DeepEP README: 77-194 µs for a whole
# 8-token-per-rank dispatch+combine over RDMA; ~10 µs within NVLink); across the
# scale-out network ~25 µs.
COLLECTIVE_LATENCY_S = {"scaleup": 8e-6, "scaleout": 25e-6}
# Expert-parallel all-to-all (dispatch or combine) latency: DeepEP's low-latency
# kernels take 77-194 µs per dispatch/combine over RDMA for 128 tokens per rank
# (deepseek-ai/DeepEP README); within NVLink tens of µs.
A2A_LATENCY_S = {"scaleup": 30e-6, "scaleout": 100e-6}
# The busiest expert-parallel rank sets the pace: with routing as trained and no
# expert-load balancer, the hottest rank carries ~1.2-1.3x the mean load
# (deepseek-ai/EPLB README motivates replicating hot experts for this reason).
EP_IMBALANCE = 1.25


# Scale-up fabrics without a switch or a full mesh: a message crosses several links.
MULTI_HOP_WORDS = ("torus", "ring", "hypercube")


def allreduce_steps(accel: Accelerator, group: int) -> int:
    """Latency-bound steps of one small all-reduce over ``group`` chips of one scale-up
    domain. Through a switch (NVSwitch, NeuronSwitch) or over a full mesh (xGMI, Maia's
    tray) a one-shot all-reduce is one step. On a ring, torus or hypercube (Trainium1/2,
    Inferentia2, TPU ICI) no chip reaches all the others in one hop, and the
    latency-optimal algorithm for small messages, recursive doubling-halving, takes
    2 log2(n) steps (AWS Neuron docs, "Intra-node collective communications": Ring,
    Mesh, KangaRing and RDH algorithms; Thakur et al. 2005 for RDH's step count)."""
    text = accel.scaleup.lower()
    if group <= 2 or "switch" in text or not any(w in text for w in MULTI_HOP_WORDS):
        return 1
    return 2 * math.ceil(math.log2(group))


# Kernels one decoder layer launches (the launch-gap prior is per ~10 kernels of a dense
# layer: 2 norms, QKV, rope, attention, O, gate-up, activation, down, residual). A MoE
# layer adds the router GEMM, top-k, token permute (dispatch), two grouped GEMMs, their
# activation, unpermute (combine) and the shared expert's GEMMs: ~8 more (vLLM's
# fused_moe and TRT-LLM's MoE plugin launch this sequence). MLA adds the q_a/q_b and
# kv_a/kv_b projections, their two norms and the latent split: ~6 more (DeepSeek-V3's
# modeling code). Counted from the operators, not fitted.
DENSE_LAYER_KERNELS = 10.0
MOE_EXTRA_KERNELS = 8.0
MLA_EXTRA_KERNELS = 6.0


def kernels_per_layer(model: ModelSpec) -> float:
    """Mean kernels per decoder layer of ``model`` (see DENSE_LAYER_KERNELS)."""
    moe_share = arch.moe_layer_count(model) / max(model.num_layers, 1)
    return (DENSE_LAYER_KERNELS + MOE_EXTRA_KERNELS * moe_share
            + (MLA_EXTRA_KERNELS if model.is_mla else 0.0))


def chip_class(accel: Accelerator) -> str:
    """'gpu', 'tpu' or 'asic' (Trainium, Inferentia, Maia): what runtime it runs."""
    if accel.vendor in ("NVIDIA", "AMD"):
        return "gpu"
    if accel.vendor == "Google":
        return "tpu"
    return "asic"


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of peak (physical, each < 0.95), and the host overhead.

    Defaults are the priors from public kernel benchmarks: cuBLAS/hipBLASLt GEMMs
    reach 0.7-0.8 of dense peak at large shapes; FlashAttention-3 reaches ~0.75 of
    H100 BF16 peak (740 of 989 TFLOP/s, Shah et al. 2024) and FlashAttention-2 ~0.5-0.7
    elsewhere; STREAM-like HBM reads reach 0.8-0.9 of peak, paged KV reads somewhat
    less; NCCL bus bandwidth ~0.8 of NVLink; a CUDA-graph decode step carries ~1 ms of
    scheduling/sampling on the host (vLLM v0.6 performance blog, 2024-09).
    """

    gemm: float = 0.75  # dense GEMM FLOP/s / peak of the compute dtype
    attention: float = 0.6  # prefill flash attention FLOP/s / BF16 peak
    bandwidth: float = 0.85  # weight streaming / peak HBM bandwidth
    kv_bandwidth: float = 0.75  # paged KV-cache reads / peak HBM bandwidth
    moe: float = 0.8  # grouped-GEMM efficiency relative to ``gemm`` at many tokens/expert
    collective: float = 0.8  # collective bus bandwidth / link bandwidth
    host_overhead_s: float = 1.0e-3  # per engine step
    # Per running sequence per step: scheduling, input preparation, sampling, detokenizing
    # (a few µs in C++ executors such as TRT-LLM's; more in Python schedulers).
    host_per_seq_s: float = 5e-6
    # Kernel launch gaps inside a captured graph: ~1 µs per kernel, ~10 kernels per layer.
    launch_gap_s_per_layer: float = 10e-6

    def scaled(self, math_factor: float, memory_factor: float, host_factor: float,
               moe_factor: float = 1.0, attention_factor: float = 1.0, cap: float = 0.95
               ) -> Efficiency:
        """These efficiencies times residual factors, each fraction kept <= ``cap``."""
        def c(x: float) -> float:
            return min(x, cap)

        return replace(self, gemm=c(self.gemm * math_factor),
                       attention=c(self.attention * math_factor * attention_factor),
                       bandwidth=c(self.bandwidth * memory_factor),
                       kv_bandwidth=c(self.kv_bandwidth * memory_factor),
                       moe=c(self.moe * moe_factor),
                       collective=c(self.collective * moe_factor),
                       host_overhead_s=self.host_overhead_s * host_factor,
                       host_per_seq_s=self.host_per_seq_s * host_factor,
                       launch_gap_s_per_layer=self.launch_gap_s_per_layer * host_factor)


class Layout(BaseModel):
    """Parallelism of a unit: ``tp * pp * dp`` chips; ``ep`` spreads experts (MoE only).
    The one layout type of tokenfleet: queries, estimates and plan units carry it, and
    in JSON/YAML it is ``{tp, pp, ep, dp}`` (each defaults to 1).

    ``ep == 1``: every replica holds all experts, tensor-split over its tp chips.
    ``ep == tp * dp``: attention is data-parallel over dp ranks, the experts of a
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

    def simplicity(self) -> tuple[int, int, int, int]:
        """Sort key, simplest first: fewer pipeline stages, no expert all-to-all, fewer
        chips per model copy (less to coordinate), then fewer replicas."""
        return (self.pp, int(self.ep > 1), self.tp * self.pp, self.dp)

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
def _structural_layouts(model: ModelSpec, count: int) -> tuple[Layout, ...]:
    """Every layout of ``count`` chips the model's shape allows (pp a power of two up
    to 8, tp at most the heads, ep at most the experts)."""
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
    return tuple(out)


def as_engines_run(lo: Layout, count: int, accel: Accelerator, engine: EngineProfile,
                   model: ModelSpec | None = None, replicas: bool | None = None) -> bool:
    """Whether engines run this layout on this chip: tensor parallel inside the scale-up
    domain, pipeline only when the unit spans domains (each stage inside one), expert
    parallel with dp > 1 (attention-DP) only where the engine has it and, by default,
    only for MLA models — the engines' recipes turn attention-DP on for DeepSeek-style
    MLA (whose latent KV every TP rank would otherwise hold whole: SGLang
    --enable-dp-attention, TRT-LLM enable_attention_dp, vLLM DP+EP docs) and serve GQA
    MoE models (Qwen3, Llama 4, gpt-oss) tensor-parallel. Ask --dp/--ep to get it.
    Plain replicas (dp > 1 without ep) only where one engine instance runs them
    (``EngineProfile.replicas``), unless ``replicas`` says otherwise (a system of
    several engine instances behind one load balancer, as MLPerf submissions run)."""
    domain = accel.scaleup_domain
    if lo.tp > domain:
        return False
    if lo.pp > 1 and (count <= domain or count // lo.pp > domain):
        return False
    if lo.ep > 1 and lo.dp > 1:
        return engine.attention_dp and (model is None or model.is_mla)
    if lo.dp > 1:  # plain replicas inside one engine instance
        return engine.replicas if replicas is None else replicas
    return True


def layouts_for(model: ModelSpec, count: int, accel: Accelerator | None = None,
                engine: str | None = None, replicas: bool | None = None) -> list[Layout]:
    """Layouts of ``count`` chips worth considering for ``model``; with ``accel``, only
    those engines run (:func:`as_engines_run`; ``replicas`` overrides the engine's
    policy on plain data-parallel copies)."""
    out = list(_structural_layouts(model, count))
    if accel is None:
        return out
    prof = engine_profile(engine)
    return [lo for lo in out if as_engines_run(lo, count, accel, prof, model, replicas)]


@dataclass(frozen=True)
class MemoryFit:
    """Per-chip memory budget of one layout (bytes), and the concurrency it allows."""

    weights_per_chip: float
    workspace_per_chip: float  # runtime reserve + activation workspace
    kv_budget_per_chip: float
    kv_per_seq_per_chip: float  # at the length the engine holds per sequence
    kv_per_token_unit: float  # bytes of KV one token costs summed over a replica's chips
    max_concurrency: int  # whole unit (all dp ranks)
    fits: bool
    reason: str


@dataclass(frozen=True)
class StepCoefficients:
    """Batch-independent factors of one stage step (seconds; see :meth:`UnitModel.step_s`).

    * ``c_gemm`` — s of dense-GEMM math per token; ``c_lm`` — s of LM-head math per
      decode token; ``m_weights`` — s to stream the dense weights once;
    * ``c_moe`` — s of expert math per routed token at full efficiency; ``moe_half`` —
      MOE_HALF_TOKENS / k; ``m_expert`` — s to stream one expert of every MoE layer of
      the stage; ``moe_e``, ``moe_keep`` (1 - k/e), ``moe_routed`` (tokens that reach
      the experts per local token: dp under attention-DP, else 1);
    * ``c_dec`` — s per decode token per attended token-layer (max of KV read and
      absorbed-form math); ``c_pre`` — s per prefill-attention FLOP (model FLOPs);
    * ``att_full``, ``att_sliding``, ``att_window`` — layers of each attention kind and
      the window (inf without sliding layers);
    * ``c_comm`` — s of collective bytes per token; ``fixed`` — s per step (host,
      launch gaps, collective latencies); ``c_seq`` — host s per decoding sequence;
      ``c_a2a`` — s of expert all-to-all bytes per token, hidden under the step's math
      when ``a2a_overlap`` is 1 (engines that overlap two micro-batches: SGLang's
      two-batch overlap, TRT-LLM's), added to it otherwise; ``pp`` stages.
    """

    c_gemm: float
    c_lm: float
    m_weights: float
    c_moe: float
    moe_half: float
    m_expert: float
    moe_e: float
    moe_keep: float
    moe_routed: float
    c_dec: float
    c_pre: float
    att_full: float
    att_sliding: float
    att_window: float
    c_comm: float
    fixed: float
    c_seq: float
    c_a2a: float
    a2a_overlap: float
    pp: float


def stage_step_s(g: StepCoefficients, dec: np.ndarray, context: np.ndarray | float,
                 pre: np.ndarray | float, pre_att_flops: np.ndarray | float,
                 expert_tokens: np.ndarray | float | None = None) -> np.ndarray:
    """Seconds of one stage step: the sum of the operators' rooflines (array-friendly).

    ``pre_att_flops`` is the prefill-attention FLOPs of the step's prompt tokens
    (model FLOPs, before the per-chip split). ``expert_tokens``: tokens per rank that
    reach the experts when they differ from ``dec + pre`` (attention-DP: the busiest
    rank's prefill sets the dense and attention time, the mean feeds the experts)."""
    tokens = dec + pre
    attended = g.att_full * context + g.att_sliding * np.minimum(context, g.att_window)
    t = np.maximum(tokens * g.c_gemm + dec * g.c_lm, g.m_weights)
    # MoE term (zero for dense models: moe_e = 0, c_moe = m_expert = 0)
    if expert_tokens is not None:
        tokens = expert_tokens
    routed = tokens * g.moe_routed
    touched = g.moe_e * (1.0 - g.moe_keep ** routed)
    t = t + np.maximum(g.c_moe * (routed + g.moe_half * touched), touched * g.m_expert)
    t = t + dec * attended * g.c_dec + pre_att_flops * g.c_pre
    a2a = tokens * g.c_a2a
    t = np.where(g.a2a_overlap > 0, np.maximum(t, a2a), t + a2a)
    return t + tokens * g.c_comm + dec * g.c_seq + g.fixed


class UnitModel:
    """Physics of one (model, chip, precision, layout, engine) with given efficiencies.

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
        engine: str | None = None,
    ) -> None:
        self.model, self.accel, self.precision, self.layout, self.eff = (
            model, accel, precision, layout, eff)
        self.kv_precision = kv_precision
        self.engine = engine_profile(engine)
        m, lo = model, layout
        pc = arch.param_counts(m)
        wb = precision.weight_bytes
        self.peak_flops = (accel.peak_tflops(precision.compute) or 0.0) * 1e12
        # Flash attention runs in BF16; a chip that lists no BF16 peak is taken at half
        # its FP8 peak (the ratio of every chip that lists both).
        bf16 = accel.bf16_tflops or (accel.fp8_tflops or 0.0) / 2
        self.attn_flops = bf16 * 1e12 or self.peak_flops
        self.hbm_bw = accel.hbm_tbps * 1e12

        self.n_moe_layers = arch.moe_layer_count(m)
        self.lm_head_params = pc.embedding if pc.tied_embeddings else pc.embedding // 2
        self.p_dense_active = pc.attention + pc.dense_mlp + pc.shared
        self.p_expert_active = pc.experts_active
        self.one_expert_params = (
            arch.mlp_params(m.hidden_size, m.moe_intermediate_size or 0, m.gated_mlp)
            if m.is_moe else 0)
        # Heads that do not divide evenly over tp are padded: the busiest chip sets the pace.
        self.head_pad = math.ceil(m.num_attention_heads / lo.tp) * lo.tp / m.num_attention_heads
        self.expert_split = lo.ep if lo.ep > 1 else lo.tp
        self.weights_per_chip = ((pc.non_expert * wb) / (lo.tp * lo.pp)
                                 + (pc.experts * wb) / (self.expert_split * lo.pp))
        # Bytes every step streams: all non-expert weights except the input embedding
        # table, of which a step reads only the looked-up rows.
        read_params = pc.non_expert - (0 if pc.tied_embeddings else pc.embedding // 2)
        self.non_expert_bytes_per_chip = read_params * wb / (lo.tp * lo.pp)

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
        # The slowest stage holds ceil(layers / pp) layers (uneven split = bubble).
        self.layers_per_stage = float(math.ceil(m.num_layers / lo.pp))
        self.stage_share = self.layers_per_stage / m.num_layers
        self.kernel_weight = kernels_per_layer(m) / DENSE_LAYER_KERNELS
        self.coeffs = self._coefficients()

    # ---- links --------------------------------------------------------------------

    def _link(self, group: int, latency: dict[str, float] = COLLECTIVE_LATENCY_S
              ) -> tuple[float, float]:
        """(one-direction bytes/s at the collective efficiency, latency s) of a group."""
        a = self.accel
        inside = group <= a.scaleup_domain
        gbps = a.scaleup_gbps if inside else a.scaleout_gbps
        lat = latency["scaleup" if inside else "scaleout"]
        return gbps / 2 * 1e9 * self.eff.collective, lat

    # ---- coefficients ---------------------------------------------------------------

    def _coefficients(self) -> StepCoefficients:
        lo, m, eff = self.layout, self.model, self.eff
        share = self.stage_share
        gemm_flops = self.peak_flops * eff.gemm
        # Attention projections are padded with the heads; MLPs are not.
        pc = arch.param_counts(m)
        dense = (pc.attention * self.head_pad + pc.dense_mlp + pc.shared) * share / lo.tp
        c_gemm = 2.0 * dense / gemm_flops if gemm_flops else math.inf
        # The LM head runs on the last stage only; it is charged to every stage (the
        # slowest stage sets the pace), split over tp.
        c_lm = 2.0 * self.lm_head_params / lo.tp / gemm_flops if gemm_flops else math.inf
        bw = eff.bandwidth * self.hbm_bw
        m_weights = self.non_expert_bytes_per_chip * lo.pp * share / bw
        if self.n_moe_layers:
            e, k = m.num_experts, m.experts_per_token
            moe_layers = self.n_moe_layers * share
            # Under expert parallelism the busiest rank sets the pace.
            imbalance = EP_IMBALANCE if lo.ep > 1 else 1.0
            c_moe = (2.0 * self.one_expert_params * k * moe_layers / self.expert_split
                     * imbalance / (gemm_flops * eff.moe)) if gemm_flops else math.inf
            m_expert = (self.one_expert_params * self.precision.weight_bytes * moe_layers
                        / self.expert_split / bw)
            moe_e, moe_keep, moe_half = float(e), 1.0 - k / e, MOE_HALF_TOKENS / k
            routed = float(lo.dp if lo.ep > 1 else 1)
        else:
            c_moe = m_expert = moe_e = moe_half = 0.0
            moe_keep, routed = 1.0, 1.0
        # Decode attention per attended token-layer: KV bytes vs absorbed-form math.
        dk, dv = arch.attention_dims(m)
        dec_flops = 2.0 * m.num_attention_heads * (dk + dv) * self.head_pad / lo.tp
        c_dec = max(self.kv_tok_layer_chip / (eff.kv_bandwidth * self.hbm_bw),
                    dec_flops / (eff.attention * self.attn_flops)) * share
        c_pre = self.head_pad / lo.tp * share / (eff.attention * self.attn_flops)
        full, sliding = arch.attention_layer_counts(m)
        window = float(m.sliding_window) if (sliding and m.sliding_window) else math.inf
        c_comm, c_a2a, lat = self._collectives()
        fixed = (eff.host_overhead_s + eff.launch_gap_s_per_layer * self.layers_per_stage
                 * self.kernel_weight + lat)
        return StepCoefficients(
            c_gemm=c_gemm, c_lm=c_lm, m_weights=m_weights, c_moe=c_moe, moe_half=moe_half,
            m_expert=m_expert, moe_e=moe_e, moe_keep=moe_keep, moe_routed=routed,
            c_dec=c_dec, c_pre=c_pre, att_full=float(full), att_sliding=float(sliding),
            att_window=window, c_comm=c_comm, fixed=fixed, c_seq=eff.host_per_seq_s,
            c_a2a=c_a2a, a2a_overlap=float(self.engine.overlaps_a2a), pp=float(lo.pp))

    def _collectives(self) -> tuple[float, float, float]:
        """(s per token of TP/PP collective bytes, s per token of expert all-to-all
        bytes, s of collective latency) per stage step."""
        lo, m = self.layout, self.model
        act = m.hidden_size * ACTIVATION_BYTES
        layers = self.layers_per_stage
        per_tok = a2a = lat = 0.0
        if lo.tp > 1:  # two all-reduces per layer (attention out, MLP out), ring
            bw, l1 = self._link(lo.tp)
            per_tok += 2 * layers * 2 * (lo.tp - 1) / lo.tp * act / bw
            steps = allreduce_steps(self.accel, lo.tp) if lo.tp <= self.accel.scaleup_domain else 1
            lat += 2 * layers * l1 * steps
        moe_layers = self.n_moe_layers * self.stage_share
        if lo.ep > 1 and moe_layers:
            # Dispatch (FP8 where the math is FP8/FP4, as DeepEP and TRT-LLM do) and
            # combine (BF16) of each token's k expert copies leaving the rank.
            bw, l1 = self._link(lo.ep, A2A_LATENCY_S)
            dispatch = 1.0 if self.precision.compute in ("fp8", "fp4") else ACTIVATION_BYTES
            # Across scale-up domains a token travels once per destination domain and
            # fans out inside it (DeepEP's internode kernels); inside one, once per expert.
            domains = lo.ep // self.accel.scaleup_domain
            copies = min(m.experts_per_token, domains) if domains > 1 else m.experts_per_token
            sent = m.hidden_size * copies * (lo.ep - 1) / lo.ep
            a2a += moe_layers * sent * (dispatch + ACTIVATION_BYTES) / lo.tp / bw
            lat += 2 * moe_layers * l1
        if lo.pp > 1:
            bw, l1 = self._link(lo.tp * lo.pp)
            per_tok += act / bw
            lat += l1
        return per_tok, a2a, lat

    # ---- memory -------------------------------------------------------------------

    def kv_seq_bytes_per_chip(self, seq_len: float) -> float:
        """KV bytes one sequence of ``seq_len`` tokens occupies on one chip of a stage."""
        token_layers = arch.attended_tokens(self.model, seq_len)
        return token_layers / self.layout.pp * self.kv_tok_layer_chip

    def runtime_reserve_per_chip(self) -> float:
        """Bytes per chip the runtime holds: framework, graphs, collective buffers, the
        activation workspace of one full token budget, sampling logits, EP buffers."""
        m, lo, eng = self.model, self.layout, self.engine
        fixed = RUNTIME_RESERVE_GB[chip_class(self.accel)] * 1e9
        if lo.ep > 1:
            fixed += EP_BUFFER_GB * 1e9
        width = 4 * m.hidden_size + 2 * max(m.intermediate_size / lo.tp,
                                            (m.moe_intermediate_size or 0)
                                            * m.experts_per_token / self.expert_split)
        workspace = eng.max_num_batched_tokens * width * ACTIVATION_BYTES
        logits = eng.max_num_seqs * m.vocab_size / lo.tp * 4.0  # FP32 logits to sample
        return fixed + workspace + logits

    def memory(self, input_len: int, output_len: int, reserve_full: bool | None = None
               ) -> MemoryFit:
        """Per-chip memory budget and the concurrency it allows.

        ``reserve_full`` (default: the engine's policy): admit a request only when KV
        for its whole length fits (TensorRT-LLM's GUARANTEED_NO_EVICT, static Neuron
        slots); otherwise admission follows current use (vLLM, SGLang), which averages
        I + O/2 tokens per sequence.
        """
        lo, eng = self.layout, self.engine
        full_res = eng.reserve_full if reserve_full is None else reserve_full
        hbm = self.accel.hbm_gb * 1e9
        reserve = self.runtime_reserve_per_chip()
        if eng.kv_of_free:
            budget = eng.memory_fraction * (hbm - self.weights_per_chip - reserve)
        else:
            budget = eng.memory_fraction * hbm - self.weights_per_chip - reserve
        held_len = input_len + (output_len if full_res else output_len / 2)
        per_seq = self.kv_seq_bytes_per_chip(held_len)
        full_seq = self.kv_seq_bytes_per_chip(input_len + output_len)
        kv_per_token_unit = self.kv_seq_bytes_per_chip(1.0) * lo.tp * lo.pp
        usable = eng.memory_fraction * hbm - reserve
        if self.weights_per_chip > usable:
            need = (self.weights_per_chip + reserve) / eng.memory_fraction / 1e9
            return MemoryFit(self.weights_per_chip, reserve, budget, per_seq, kv_per_token_unit,
                             0, False,
                             f"weights need {self.weights_per_chip / 1e9:.1f} GB per chip with "
                             f"{lo} (+{reserve / 1e9:.1f} GB runtime); {self.accel.id} has "
                             f"{self.accel.hbm_gb:g} GB (needs ≥ {need:.0f} GB at "
                             f"{eng.memory_fraction:.0%} usable)")
        if full_seq > budget:
            return MemoryFit(self.weights_per_chip, reserve, budget, per_seq, kv_per_token_unit,
                             0, False,
                             f"one sequence of {input_len + output_len} tokens needs "
                             f"{full_seq / 1e9:.2f} GB of KV per chip; "
                             f"{max(budget, 0) / 1e9:.2f} GB left after weights and runtime")
        per_replica = min(int(budget // per_seq), eng.max_num_seqs)
        return MemoryFit(self.weights_per_chip, reserve, budget, per_seq, kv_per_token_unit,
                         per_replica * lo.dp, True, "")

    # ---- time ---------------------------------------------------------------------

    def step_s(
        self,
        decode_tokens: np.ndarray,
        context: float,
        prefill_tokens: np.ndarray | float = 0.0,
        prompt_len: int = 1,
        busiest_prefill: np.ndarray | float | None = None,
    ) -> np.ndarray:
        """Seconds for one pipeline stage to run one engine step (per chip view).

        The step carries ``decode_tokens`` decode tokens at mean ``context`` and
        ``prefill_tokens`` prompt tokens of prompts ``prompt_len`` long (chunked
        prefill mixes both; the weights are streamed once for the whole step).
        ``busiest_prefill``: under attention-DP, the prompt tokens of the busiest rank,
        which every rank waits for at each expert layer."""
        dec = np.asarray(decode_tokens, dtype=float)
        pre = np.asarray(prefill_tokens, dtype=float)
        per_tok = arch.prefill_attention_flops(self.model, prompt_len) / max(prompt_len, 1)
        if busiest_prefill is None:
            return stage_step_s(self.coeffs, dec, context, pre, pre * per_tok)
        busy = np.maximum(np.asarray(busiest_prefill, dtype=float), pre)
        return stage_step_s(self.coeffs, dec, context, busy, busy * per_tok, dec + pre)

    def _busiest_prefill(self, pre: np.ndarray, chunk: np.ndarray) -> np.ndarray | None:
        """Under attention-DP (ep > 1, dp > 1) prompts arrive whole (chunked up to
        ``chunk``) on one rank at a time, and the ranks meet at every expert layer: a
        step lasts as long as the busiest rank's. With ``pre`` prompt tokens per rank
        per step on average, some rank runs a chunk with probability
        1 - exp(-dp * pre / chunk)."""
        lo = self.layout
        if not (lo.ep > 1 and lo.dp > 1):
            return None
        p_any = 1.0 - np.exp(-lo.dp * pre / np.maximum(chunk, 1.0))
        return np.maximum(pre, chunk * p_any)

    # ---- operating points -----------------------------------------------------------

    def continuous(self, concurrency: np.ndarray, input_len: int, output_len: int
                   ) -> dict[str, np.ndarray]:
        """Steady-state continuous batching with chunked prefill at ``concurrency``
        sequences per unit (see the module docstring)."""
        return self.steady_state(concurrency, input_len, output_len)

    def steady_state(self, concurrency: np.ndarray, input_len: int, output_len: int,
                     fresh_len: float | None = None, attn_len: int | None = None,
                     verify: int = 0, advance: float = 1.0) -> dict[str, np.ndarray]:
        """:meth:`continuous`, generalised for the serving techniques
        (``perf/techniques.py``); the defaults are plain serving.

        ``fresh_len``: prompt tokens computed per request (a prefix cache skips the rest;
        the KV still holds all ``input_len``); ``attn_len``: the prompt length that prices
        their attention; ``verify``: positions each decoding sequence verifies per step
        besides its own token (speculative decoding), priced like prompt tokens at the
        sequence's context; ``advance``: output tokens a sequence gains per step."""
        lo = self.layout
        budget = float(self.engine.max_num_batched_tokens)
        c = np.maximum(np.asarray(concurrency, dtype=float) / lo.dp, 1.0)
        o = max(output_len, 1)
        ctx = input_len + o / 2
        fresh = float(input_len) if fresh_len is None else float(fresh_len)
        attn = input_len if attn_len is None else attn_len
        micro = np.maximum(c / lo.pp, 1.0)
        # Each decoding sequence takes 1 + verify tokens of the step's budget, plus its
        # share of the prompts admitted to replace the sequences that finish.
        share = advance * fresh / o
        dec = np.minimum(micro, budget / (1.0 + verify + share))
        pre = dec * share
        # A new prompt gets what the decodes leave of the budget, chunk by chunk.
        chunk = np.minimum(fresh, np.maximum(budget - dec * (1 + verify), 1.0))
        busy = self._busiest_prefill(pre, chunk)
        mixed = self._mixed_len(pre, dec * verify, attn, ctx)
        t_iter = lo.pp * self.step_s(dec, ctx, pre + dec * verify, mixed, busy)
        t_iter = t_iter + self.drafter_s(dec * lo.pp, dec, ctx, pre * lo.pp, attn)
        if fresh > 0:
            chunks = np.ceil(fresh / chunk)
            one = self._mixed_len(chunk, dec * verify, attn, ctx)
            t_chunk = lo.pp * self.step_s(dec, ctx, chunk + dec * verify, one)
            ttft = t_iter / 2 + chunks * t_chunk + self.drafter_prefill_s(fresh, attn)
        else:  # prompts arrive as KV (a decode pool): join the batch, then one step
            ttft = 1.5 * t_iter
        return {
            "ttft_s": ttft,
            "tpot_s": t_iter / advance,
            "output_tokens_per_s": dec * lo.pp * advance / t_iter * lo.dp,
            "concurrency": c * lo.dp,
        }

    @staticmethod
    def _mixed_len(prompt_tokens: np.ndarray | float, verify_tokens: np.ndarray | float,
                   attn_len: int, ctx: float) -> int:
        """One prompt length that prices prompt tokens (at ``attn_len``) and verify
        positions (attending to ``ctx`` tokens, i.e. a prompt of ``2 ctx``) together:
        their ratio does not depend on the batch, so the mean of one element does."""
        p = float(np.ravel(prompt_tokens)[0])
        v = float(np.ravel(verify_tokens)[0])
        if v <= 0.0 or p + v <= 0.0:
            return attn_len
        return max(int(round((p * attn_len + v * 2 * ctx) / (p + v))), 1)

    def drafter_s(self, live: np.ndarray, micro: np.ndarray, ctx: float,
                  prompt_tokens: np.ndarray, attn_len: int) -> np.ndarray:
        """Seconds a speculative drafter adds to one iteration (none here; see
        ``perf/techniques.py``)."""
        return np.zeros_like(np.asarray(live, dtype=float))

    def drafter_prefill_s(self, fresh: float, attn_len: int) -> float:
        """Seconds a drafter adds to a prompt's prefill (none here)."""
        return 0.0

    def drafter_kv_seq_bytes_per_chip(self, seq_len: float) -> float:
        """KV bytes per chip a speculative drafter keeps for a sequence of ``seq_len``
        tokens beside the target's (none here)."""
        return 0.0

    def static(self, batch: np.ndarray | int, input_len: int, output_len: int
               ) -> dict[str, np.ndarray]:
        """Static batching (all sequences start and end together), ``batch`` sequences
        per engine instance (dp rank)."""
        lo = self.layout
        b = np.maximum(np.asarray(batch, dtype=float), 1.0)
        zero = np.zeros_like(b)
        ttft = self.step_s(zero, 0.0, b * input_len, input_len) * lo.pp
        micro = np.maximum(b / lo.pp, 1.0)
        tpot = self.step_s(micro, input_len + output_len / 2) * lo.pp
        total = ttft + max(output_len - 1, 0) * tpot
        return {
            "ttft_s": ttft,
            "tpot_s": tpot,
            "output_tokens_per_s": b * output_len / total * lo.dp,
            "concurrency": b * lo.dp,
        }
