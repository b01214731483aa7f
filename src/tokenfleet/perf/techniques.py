"""Serving techniques on top of the roofline unit: prefix caching, speculative decoding /
MTP, and a unit that serves only prefill or only decode (disaggregated serving).

:class:`TechniqueUnit` is a :class:`~tokenfleet.perf.unit.UnitModel` whose steady state
(``continuous``) and memory change as follows; with no technique on it is never used
(``estimate`` takes the plain path), so today's numbers stay as they are.

**Prefix caching** at hit rate ``h``: a new request's first ``h * I`` prompt tokens come
from the cache, so each iteration prefills ``C / O * I * (1 - h)`` tokens and TTFT's prompt
step carries ``I * (1 - h)``. The uncached suffix still attends to the whole prompt, so
its tokens are costed at a mean context of ``I * (1 + h) / 2`` (the ``prompt_len`` given to
the step is ``I * (1 + h)``). The KV cache still holds the whole context: memory and
decode reads are unchanged.

**Speculation** (see ``perf/speculative.py``): every iteration each sequence verifies
``k`` proposed tokens plus one of its own and advances ``E`` tokens on average. The ``k``
verify positions ride in the target's step like a prefill chunk at the sequence's
context (GEMMs over every position, the sequence's KV read once); the drafter adds its
steps: a draft model's own roofline steps (on the unit's tensor-parallel chips, with its
weights and KV taking memory; a ``fused`` draft without its per-layer fixed overhead),
or for MTP one extra layer of the target per proposal.
TPOT = iteration / E; throughput = C * E / iteration.

**Role** ``prefill``: the unit only prefills. An iteration computes ``C`` prompts; then
each prompt's KV cache goes to a decode pool over the link (``perf/disagg.py``), whose
time is added to TTFT and whose bandwidth caps the unit's prompt rate. TPOT is not this
unit's (0). Throughput counts the output tokens the prompts it serves will generate
(requests/s times O), so prefill and decode pools compare in one unit.

**Role** ``decode``: prompts arrive as KV caches, so iterations carry no prefill; TTFT
is this unit's share only: joining the running batch plus one step (the prefill pool's
TTFT and the transfer come before it).

What the planner needs from here (not wired into ``plan/`` yet):

* a tier's hit rate at the cache it buys: ``workload.prefix.prefix_reuse(trace)``, then
  ``.hit_rate(kv_tokens // 512)`` (``.curve`` for many sizes at once). With the
  simulator's plan-split routing a lane only reuses about what one lane-sized cache
  finds (``kv_tokens_per_lane``); the tier's whole KV needs cache-affinity routing;
* a candidate priced with a technique: ``Query(prefix_hit_rate=..., speculative=...,
  role=...)`` through ``estimate``/``operating_point``; ``layout_screen`` still builds a
  plain ``UnitModel`` (use ``TechniqueUnit`` there);
* a disaggregated pair: ``role="prefill"`` and ``role="decode"`` estimates (of any two
  chips), ``perf.disagg.link_between`` for the link (``kv_link_gbps`` prices the prefill
  unit on it) and ``perf.disagg.pd_ratio`` / ``balanced_pools`` for the P:D ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from tokenfleet.catalog.schema import Accelerator, ModelSpec
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.disagg import Link, link_between, prompt_kv_bytes, transfer_s
from tokenfleet.perf.operating import (
    OperatingPoint,
    UnitCache,
    best_operating_point,
    unit_getter,
)
from tokenfleet.perf.precision import Precision
from tokenfleet.perf.speculative import Speculation
from tokenfleet.perf.unit import (
    Efficiency,
    Layout,
    MemoryFit,
    UnitModel,
)

Role = Literal["both", "prefill", "decode"]
ROLES: tuple[str, ...] = ("both", "prefill", "decode")


@dataclass(frozen=True)
class Techniques:
    """What a unit runs beyond plain continuous batching (defaults: nothing)."""

    prefix_hit_rate: float = 0.0
    speculation: Speculation | None = None
    draft: ModelSpec | None = None  # the draft model of a ``draft`` speculation
    role: Role = "both"
    kv_link: Link | None = None  # prefill role: link to the decode pool (default scale-out)

    def __post_init__(self) -> None:
        if not 0.0 <= self.prefix_hit_rate < 1.0:
            raise TokenfleetError(
                f"prefix hit rate must be within [0, 1), got {self.prefix_hit_rate}")
        if self.role not in ROLES:
            raise TokenfleetError(f"role must be one of {', '.join(ROLES)}, got '{self.role}'")
        spec = self.speculation
        if spec is not None and spec.kind != "mtp" and self.draft is None:
            raise TokenfleetError("a draft speculation needs its draft model")

    @property
    def plain(self) -> bool:
        return self.prefix_hit_rate == 0.0 and self.speculation is None and self.role == "both"

    @property
    def tokens_per_step(self) -> float:
        return self.speculation.tokens_per_step if self.speculation else 1.0


def check_speculation(target: ModelSpec, spec: Speculation, draft: ModelSpec | None) -> None:
    """The target can run ``spec``: an MTP head shipped with its weights, or a draft of
    its vocabulary (:func:`check_draft`)."""
    if spec.kind == "mtp" and target.mtp_modules < 1:
        raise TokenfleetError(
            f"{target.id} ships no multi-token-prediction module (its config.json has no "
            "num_nextn_predict_layers): 'mtp' speculation needs one; use "
            "draft:MODEL or fused:MODEL with a smaller model of the same vocabulary")
    if draft is not None:
        check_draft(target, draft)


def check_draft(target: ModelSpec, draft: ModelSpec) -> None:
    """A draft must share the target's vocabulary and be the smaller model."""
    if draft.vocab_size != target.vocab_size:
        raise TokenfleetError(
            f"draft model {draft.id} has vocabulary {draft.vocab_size}, target {target.id} "
            f"{target.vocab_size}: a draft must share the target's tokenizer")
    if draft.id == target.id:
        raise TokenfleetError(f"draft model {draft.id} is the target itself")


class TechniqueUnit(UnitModel):
    """A unit with serving techniques on (see the module docstring)."""

    def __init__(self, model: ModelSpec, accel: Accelerator, precision: Precision,
                 kv_precision: str, layout: Layout, eff: Efficiency, tech: Techniques,
                 engine: str | None = None) -> None:
        super().__init__(model, accel, precision, kv_precision, layout, eff, engine)
        self.tech = tech
        self.draft_unit: UnitModel | None = None
        if tech.speculation is not None and tech.speculation.kind != "mtp":
            assert tech.draft is not None
            # The draft runs tensor-parallel on one stage's chips (as Neuron's fused
            # speculation and vLLM's draft runner place it).
            dtp = max(d for d in range(1, layout.tp + 1)
                      if layout.tp % d == 0 and d <= tech.draft.num_attention_heads)
            self.draft_unit = UnitModel(tech.draft, accel, precision, kv_precision,
                                        Layout(dtp, 1, 1), eff, engine)
        self.link = tech.kv_link or link_between(accel, accel)
        self._transfer_s: dict[int, float] = {}

    # ---- memory -------------------------------------------------------------------

    def _drafter_bytes(self, held_len: float) -> tuple[float, float]:
        """(weights per chip, KV per sequence per chip) the drafter adds."""
        spec = self.tech.speculation
        if spec is None or self.tech.role == "prefill":
            return 0.0, 0.0
        if self.draft_unit is not None:
            return (self.draft_unit.weights_per_chip,
                    self.draft_unit.kv_seq_bytes_per_chip(held_len))
        # MTP: one more layer's weights and KV, on the stage that holds the head
        layer = self.layout.pp / self.model.num_layers
        return self.weights_per_chip * layer, self.kv_seq_bytes_per_chip(held_len) * layer

    def drafter_kv_seq_bytes_per_chip(self, seq_len: float) -> float:
        return self._drafter_bytes(seq_len)[1]

    def memory(self, input_len: int, output_len: int, reserve_full: bool | None = None
               ) -> MemoryFit:
        out_len = 0 if self.tech.role == "prefill" else output_len
        base = super().memory(input_len, out_len, reserve_full)
        full = self.engine.reserve_full if reserve_full is None else reserve_full
        held = input_len + (out_len if full else out_len / 2)
        extra_w, extra_seq = self._drafter_bytes(held)
        if not base.fits or (extra_w == 0.0 and extra_seq == 0.0):
            return base
        budget = base.kv_budget_per_chip - extra_w
        per_seq = base.kv_per_seq_per_chip + extra_seq
        per_replica = min(int(max(budget, 0.0) // per_seq), self.engine.max_num_seqs)
        if per_replica < 1:
            return replace(base, kv_budget_per_chip=budget, kv_per_seq_per_chip=per_seq,
                           max_concurrency=0, fits=False,
                           reason=f"the drafter's weights ({extra_w / 1e9:.2f} GB/chip) and KV "
                                  f"leave no room for one sequence of {input_len + out_len} "
                                  f"tokens")
        return replace(base, kv_budget_per_chip=budget, kv_per_seq_per_chip=per_seq,
                       max_concurrency=per_replica * self.layout.dp)

    # ---- time ---------------------------------------------------------------------

    def kv_transfer_s(self, input_len: int) -> float:
        """Seconds to hand one prompt's KV cache to the decode pool (prefill role)."""
        # a unit is asked this per layout evaluation of a shape: count it once
        got = self._transfer_s.get(input_len)
        if got is None:
            kv = prompt_kv_bytes(self.model, input_len, self.kv_precision)
            got = self._transfer_s[input_len] = transfer_s(kv, self.link,
                                                           self.layout.tp * self.layout.pp)
        return got

    def _prefill_shape(self, input_len: int) -> tuple[float, int]:
        """(prompt tokens computed per request, prompt_len that prices their attention)."""
        h = self.tech.prefix_hit_rate
        return input_len * (1.0 - h), max(int(round(input_len * (1.0 + h))), 1)

    def continuous(self, concurrency: np.ndarray, input_len: int, output_len: int
                   ) -> dict[str, np.ndarray]:
        if self.tech.role == "prefill":
            return self._prefill_only(concurrency, input_len, output_len)
        spec = self.tech.speculation
        fresh, attn_len = self._prefill_shape(input_len)
        if self.tech.role == "decode":  # prompts arrive as KV caches
            fresh = 0.0
        return self.steady_state(concurrency, input_len, output_len, fresh_len=fresh,
                                 attn_len=attn_len, verify=spec.k if spec else 0,
                                 advance=self.tech.tokens_per_step)

    def static(self, batch: np.ndarray | int, input_len: int, output_len: int
               ) -> dict[str, np.ndarray]:
        """Static batches (Neuron) with the techniques on: the batch's prompts, less their
        cached prefix, in one prefill; then steps that verify ``k`` proposals and advance
        ``E`` tokens each. A disaggregated role is a continuous-batching pool."""
        if self.tech.role != "both":
            return self.continuous(np.asarray(batch, dtype=float) * self.layout.dp,
                                   input_len, output_len)
        lo, spec = self.layout, self.tech.speculation
        b = np.maximum(np.asarray(batch, dtype=float), 1.0)
        fresh, attn_len = self._prefill_shape(input_len)
        ttft = (self.step_s(np.zeros_like(b), 0.0, b * fresh, attn_len) * lo.pp
                + self.drafter_prefill_s(fresh, attn_len))
        micro = np.maximum(b / lo.pp, 1.0)
        k = spec.k if spec else 0
        ctx = input_len + output_len / 2
        mixed = self._mixed_len(0.0, k, attn_len, ctx)
        step = (self.step_s(micro, ctx, micro * k, mixed) * lo.pp
                + self.drafter_s(b, micro, ctx, np.zeros_like(b), attn_len))
        tpot = step / self.tech.tokens_per_step
        total = ttft + max(output_len - 1, 0) * tpot
        return {
            "ttft_s": ttft,
            "tpot_s": tpot,
            "output_tokens_per_s": b * output_len / total * lo.dp,
            "concurrency": b * lo.dp,
        }

    def drafter_s(self, live: np.ndarray, micro: np.ndarray, ctx: float,
                  prompt_tokens: np.ndarray, attn_len: int) -> np.ndarray:
        """Seconds the drafter adds to one iteration: ``k`` proposal steps for every
        sequence, the first also prefilling the newly admitted prompts."""
        spec = self.tech.speculation
        c = np.asarray(live, dtype=float)
        if spec is None:
            return np.zeros_like(c)
        if self.draft_unit is not None:
            d = self.draft_unit
            # fused into the target's step: no fixed per-step host/launch cost of its own
            fixed = d.coeffs.fixed if spec.kind == "fused" else 0.0
            return (d.step_s(c, ctx, prompt_tokens, attn_len)
                    + (spec.k - 1) * d.step_s(c, ctx) - spec.k * fixed)
        # MTP: one more layer of the target's step per proposal
        lo = self.layout
        first = lo.pp * self.step_s(micro, ctx, prompt_tokens / lo.pp, attn_len)
        rest = lo.pp * self.step_s(micro, ctx)
        return (first + (spec.k - 1) * rest) / self.model.num_layers

    def drafter_prefill_s(self, fresh: float, attn_len: int) -> float:
        """Extra TTFT: the draft model prefills the prompt too (MTP rides in the target)."""
        if self.draft_unit is None:
            return 0.0
        one = np.asarray([0.0])
        spec = self.tech.speculation
        fixed = self.draft_unit.coeffs.fixed if spec is not None and spec.kind == "fused" else 0.0
        return float(self.draft_unit.step_s(one, 0.0, fresh, attn_len)[0]) - fixed

    def _prefill_only(self, concurrency: np.ndarray, input_len: int, output_len: int
                      ) -> dict[str, np.ndarray]:
        lo = self.layout
        b = np.maximum(np.asarray(concurrency, dtype=float) / lo.dp, 1.0)  # prompts per iteration
        micro = np.maximum(b / lo.pp, 1.0)
        fresh, attn_len = self._prefill_shape(input_len)
        t_iter = lo.pp * self.step_s(np.zeros_like(micro), float(input_len), micro * fresh,
                                     attn_len)
        one = self.kv_transfer_s(input_len)
        # The link must carry every prompt's KV within the iteration, or it sets the pace.
        t_link = b * (one - self.link.latency_s) + self.link.latency_s
        t_pace = np.maximum(t_iter, t_link)
        return {
            "ttft_s": 1.5 * t_iter + one,  # wait for the running batch, own batch, handover
            "tpot_s": np.zeros_like(b),
            "output_tokens_per_s": b / t_pace * max(output_len, 1) * lo.dp,
            "concurrency": b * lo.dp,
        }


def best_technique_point(
    model: ModelSpec,
    accel: Accelerator,
    precision: Precision,
    kv_precision: str,
    count: int,
    eff: Efficiency,
    input_len: int,
    output_len: int,
    mode: str,
    tech: Techniques,
    concurrency: int | None = None,
    slo_ttft: float | None = None,
    slo_tpot: float | None = None,
    layouts: list[Layout] | None = None,
    data_parallel: bool | None = None,
    engine: str | None = None,
    batching: str | None = None,
    units: UnitCache | None = None,
) -> OperatingPoint:
    """:func:`~tokenfleet.perf.operating.best_operating_point` with each layout's unit a
    :class:`TechniqueUnit`: the same layout search, choice and reasons (``units``: units
    already built, :func:`technique_units`)."""
    if tech.speculation is not None:
        check_speculation(model, tech.speculation, tech.draft)
    return best_operating_point(
        model, accel, precision, kv_precision, count, eff, input_len, output_len, mode,
        concurrency, slo_ttft, slo_tpot, layouts=layouts, data_parallel=data_parallel,
        engine=engine, batching=batching,
        unit_of=technique_units(model, accel, precision, kv_precision, eff, tech, engine,
                                units))


def technique_units(model: ModelSpec, accel: Accelerator, precision: Precision,
                    kv_precision: str, eff: Efficiency, tech: Techniques,
                    engine: str | None, units: UnitCache | None = None
                    ) -> Callable[[Layout], TechniqueUnit]:
    """Layout -> its :class:`TechniqueUnit`, from ``units`` when one was built of the
    same inputs."""
    return unit_getter(
        None if units is None else units.by_layout(
            (model, accel, tech.draft),
            ("techniques", precision, kv_precision, eff, engine, tech.prefix_hit_rate,
             tech.speculation, tech.role, tech.kv_link)),
        lambda lo: TechniqueUnit(model, accel, precision, kv_precision, lo, eff, tech,
                                 engine))
