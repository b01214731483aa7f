"""Engine-step times for many replicas at once, from the performance model.

:meth:`tokenfleet.perf.unit.UnitModel.step_s` prices one engine step of one pipeline
stage for a scalar context and prompt length. The simulator needs the time of the next
step of hundreds of replicas per event round, each with its own batch, so this module
takes the per-token coefficients ``UnitModel`` precomputes for ``step_s`` and lays them
out as per-replica arrays; only the combination (max of compute and memory, plus
communication and overhead) is written again, vectorised over replicas.
``tests/sim/test_stepcost.py`` checks equality with ``step_s`` (to 1e-9, over dense,
MoE, MLA, sliding-window and pipelined units) so the two cannot drift apart.

Two generalisations a batch of real requests needs, both reducing to ``step_s`` when
the batch is the one ``step_s`` describes:

* decode context: ``step_s`` takes the mean context of the decoding sequences; the
  attention FLOPs and KV bytes are linear in context (sliding-window layers cap it), so
  the mean over the batch is what the simulator passes;
* prefill of several prompts in one step: each prompt's chunk contributes
  ``chunk * prefill_attention_flops(L) / L`` (the per-token attention cost ``step_s``
  uses for one prompt of length ``L``); the sum over chunks is passed in as
  ``prefill_attention`` (FLOPs before the per-chip split).

Speculative decoding (a pool whose plan unit sets ``speculative``: its model is a
:class:`~tokenfleet.perf.techniques.TechniqueUnit`) adds per-lane tables
(:class:`PoolSpeculation`, :class:`kernels.Spec <tokenfleet.sim.kernels.Spec>`): the
drafter's step coefficients and the constants that price the verify positions, so a
speculative iteration costs what ``TechniqueUnit.steady_state`` charges for it.

Units: seconds, tokens, FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from tokenfleet.perf import architecture as arch
from tokenfleet.perf.techniques import TechniqueUnit
from tokenfleet.perf.unit import StepCoefficients, UnitModel, stage_step_s

COEFFS = tuple(StepCoefficients.__dataclass_fields__)
# Coefficients that are seconds (per token, per FLOP, per byte or per step); the others
# are counts, flags and windows. An MTP head is one more layer of the target: its step
# is the target's with each of these over the number of layers.
TIME_COEFFS = ("c_gemm", "c_lm", "m_weights", "c_moe", "m_expert", "c_dec", "c_pre",
               "c_comm", "fixed", "c_seq", "c_a2a")
# The expected tokens per speculative step is rounded to a multiple of this, so that
# the lanes' float sums of KV and context (E per sequence per iteration, taken off
# again when it leaves) are exact: no drift, whatever the order of the additions.
ADVANCE_QUANTUM = 1.0 / 1024


class StageCoefficients(StepCoefficients):
    """A unit's per-stage step coefficients (``tokenfleet.perf.unit.StepCoefficients``,
    the very numbers ``UnitModel.step_s`` uses)."""

    @classmethod
    def of(cls, u: UnitModel) -> StageCoefficients:
        return cls(**{k: getattr(u.coeffs, k) for k in COEFFS})


def stage_time(c: StepCoefficients | dict[str, np.ndarray], decode_tokens: np.ndarray,
               context: np.ndarray, prefill_tokens: np.ndarray,
               prefill_attention: np.ndarray) -> np.ndarray:
    """Seconds of one stage step: ``UnitModel.step_s`` over arrays (all broadcast).

    ``context`` is the mean context of the decoding sequences (tokens) and
    ``prefill_attention`` the prefill-attention FLOPs of the step's prompt chunks.
    """
    g = c if isinstance(c, StepCoefficients) else StepCoefficients(**c)  # type: ignore[arg-type]
    return stage_step_s(g, decode_tokens, context, prefill_tokens, prefill_attention)


@dataclass(frozen=True)
class PoolSpeculation:
    """How a pool's lanes speculate (defaults: plain decoding).

    * ``verify`` — positions each decoding sequence verifies per iteration besides its
      own token (the ``k`` proposals);
    * ``advance`` — tokens a decoding sequence gains per iteration: the expected
      ``E = (1 - a^(k+1)) / (1 - a)`` (a deterministic expectation, no random
      acceptance), rounded to :data:`ADVANCE_QUANTUM`;
    * ``draft`` — the drafter's step coefficients: the draft unit's (``fused``: with
      no fixed per-step cost of its own), or the target's with every time coefficient
      over its number of layers (MTP), as ``TechniqueUnit.drafter_s``; ``None``: none;
    * ``draft_attention`` — the drafter's prompt-attention FLOPs per target FLOP
      (the MTP table's ``c_pre`` already carries its 1/layers: 1)."""

    verify: int = 0
    advance: float = 1.0
    draft: StepCoefficients | None = None
    draft_attention: float = 0.0


def _att_per_token_scale(unit: UnitModel) -> float:
    """Prompt-attention FLOPs per token per (query, key) pair over all layers: the
    ratio of two models' prompt attention (exact for full attention; sliding-window
    layers counted as full)."""
    m = unit.model
    dk, dv = arch.prefill_attention_dims(m)
    full, sliding = arch.attention_layer_counts(m)
    return 2.0 * m.num_attention_heads * (dk + dv) * (full + sliding)


def pool_speculation(unit: UnitModel) -> PoolSpeculation:
    """The speculation of a pool's performance model (plain unless it is a
    :class:`TechniqueUnit` with a speculative setting)."""
    if not isinstance(unit, TechniqueUnit) or unit.tech.speculation is None:
        return PoolSpeculation()
    spec = unit.tech.speculation
    advance = max(round(spec.tokens_per_step / ADVANCE_QUANTUM) * ADVANCE_QUANTUM, 1.0)
    if unit.draft_unit is not None:
        draft = unit.draft_unit.coeffs
        if spec.kind == "fused":
            draft = replace(draft, fixed=0.0)
        ratio = _att_per_token_scale(unit.draft_unit) / _att_per_token_scale(unit)
        return PoolSpeculation(spec.k, advance, draft, ratio)
    layers = float(unit.model.num_layers)
    c = unit.coeffs
    mtp = replace(c, **{f.name: getattr(c, f.name) / layers for f in fields(c)
                        if f.name in TIME_COEFFS})
    return PoolSpeculation(spec.k, advance, mtp, 1.0)


class FleetStepCost:
    """Per-replica coefficient arrays: the time of one replica *iteration* (all pp
    stages, micro-batches of ``1/pp`` of the batch, as ``UnitModel.continuous``) for
    any subset of replicas in one vectorised call.

    ``speculation`` (per pool, default plain): the drafter's coefficient table and the
    verify-attention constants per lane (:class:`kernels.Spec
    <tokenfleet.sim.kernels.Spec>`, ``spec``; zeros on plain lanes); ``units`` (per
    pool) give the target's prompt-attention constants."""

    def __init__(self, per_pool: list[StageCoefficients], pool_of_replica: np.ndarray,
                 speculation: list[PoolSpeculation] | None = None,
                 units: list[UnitModel] | None = None) -> None:
        from tokenfleet.sim import kernels

        table = np.array([[getattr(c, name) for name in COEFFS] for c in per_pool],
                         dtype=np.float64).reshape(len(per_pool), len(COEFFS))
        # One row per coefficient, one column per replica: a single gather per call.
        self.table = np.ascontiguousarray(table[pool_of_replica].T)
        self.moe = bool(per_pool) and any(c.m_expert > 0 for c in per_pool)
        self.sliding = bool(per_pool) and any(np.isfinite(c.att_window) for c in per_pool)
        spec = speculation or [PoolSpeculation() for _ in per_pool]
        on = any(s.verify > 0 for s in spec)
        draft = np.zeros((len(per_pool), len(COEFFS)))
        att = np.zeros((len(per_pool), 5))
        for i, s in enumerate(spec):
            if s.draft is not None:
                draft[i] = [getattr(s.draft, name) for name in COEFFS]
            if s.verify > 0:
                assert units is not None, "speculative pools need their units"
                att[i] = _verify_constants(units[i]) + (s.draft_attention,)
        self.verify = np.array([s.verify for s in spec], dtype=np.int64)[pool_of_replica]
        self.advance = np.array([s.advance for s in spec], dtype=np.float64)[pool_of_replica]
        self.spec = kernels.Spec(on, np.ascontiguousarray(draft[pool_of_replica].T),
                                 np.ascontiguousarray(att[pool_of_replica].T))

    def iteration_s(self, idx: np.ndarray, decode: np.ndarray, context: np.ndarray,
                    prefill: np.ndarray | float, prefill_attention: np.ndarray | float
                    ) -> np.ndarray:
        """Seconds of the next iteration of replicas ``idx`` carrying ``decode`` decode
        tokens at mean ``context``, ``prefill`` prompt tokens and ``prefill_attention``
        prompt-attention FLOPs (whole replica, split over stages here)."""
        from tokenfleet.sim import kernels  # compiled; the engine's rounds call it per lane

        n = len(idx)
        return kernels.iteration_times(
            self.table, np.asarray(idx, dtype=np.int64),
            np.broadcast_to(np.asarray(decode, dtype=np.float64), n),
            np.broadcast_to(np.asarray(context, dtype=np.float64), n),
            np.broadcast_to(np.asarray(prefill, dtype=np.float64), n),
            np.broadcast_to(np.asarray(prefill_attention, dtype=np.float64), n),
            self.sliding, self.moe)


def _verify_constants(unit: UnitModel) -> tuple[float, float, float, float]:
    """(coef, full layers, sliding layers, window or 0) of ``unit``'s prompt
    attention, as :class:`PrefillAttention` lays them out."""
    m = unit.model
    dk, dv = arch.prefill_attention_dims(m)
    f, s = arch.attention_layer_counts(m)
    return (2.0 * m.num_attention_heads * (dk + dv), float(f), float(s),
            float(m.sliding_window) if (s and m.sliding_window) else 0.0)


def prefill_attention_per_token(unit: UnitModel, prompt_len: int) -> float:
    """Prompt-attention FLOPs per prefill token for a prompt of ``prompt_len`` tokens
    (model FLOPs; the per-chip split is in ``c_pre``)."""
    return arch.prefill_attention_flops(unit.model, prompt_len) / max(prompt_len, 1)


class PrefillAttention:
    """:func:`prefill_attention_per_token` for many (pool, prompt length) pairs at once.

    The scheduler admits prompts in vectorised batches, so the per-pool constants of
    :func:`tokenfleet.perf.architecture.prefill_attention_flops` are laid out as arrays
    and the formula is evaluated with the same operations in the same order (the
    result is bit-identical; ``tests/sim/test_stepcost.py`` checks it)."""

    def __init__(self, units: list[UnitModel]) -> None:
        coef, full, sliding, window = [], [], [], []
        for u in units:
            m = u.model
            dk, dv = arch.prefill_attention_dims(m)
            f, s = arch.attention_layer_counts(m)
            coef.append(2.0 * m.num_attention_heads * (dk + dv))
            full.append(f)
            sliding.append(s)
            # 0 = no sliding-window layers (or no window): every layer sees the prompt.
            window.append(m.sliding_window if (s and m.sliding_window) else 0)
        self.coef = np.array(coef, dtype=np.float64)
        self.full = np.array(full, dtype=np.float64)
        self.sliding = np.array(sliding, dtype=np.float64)
        self.window = np.array(window, dtype=np.int64)

    def per_token(self, pool: np.ndarray, prompt: np.ndarray) -> np.ndarray:
        """Prompt-attention FLOPs per prefill token of prompts of ``prompt`` tokens run
        on pools ``pool`` (index arrays of equal length)."""
        from tokenfleet.sim import kernels

        return kernels.prefill_attention_per_token(
            np.asarray(pool, dtype=np.int64), np.asarray(prompt, dtype=np.int64),
            self.coef, self.full, self.sliding, self.window)
