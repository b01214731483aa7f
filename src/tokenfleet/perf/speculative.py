"""Speculative decoding and multi-token prediction (MTP): how many tokens a step yields
and what the step costs.

A drafter proposes ``k`` tokens; the target model verifies them (and produces one token
of its own) in one forward pass over ``k + 1`` positions per sequence. With each proposed
token accepted independently at rate ``a`` (the first rejection ends the run), a step
yields on average::

    E[tokens per step] = 1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a)

(Leviathan et al., "Fast Inference from Transformers via Speculative Decoding",
arXiv 2211.17192, eq. 1). A step costs the target's verify pass plus ``k`` draft steps, so

    TPOT = (t_verify + k * t_draft) / E          throughput = sequences * E / step

Drafters:

* ``draft``: a smaller model of the same vocabulary from the catalog, run as its own
  engine steps (vLLM's and TRT-LLM's two-model draft/target). Its weights and KV cache
  share the chips; each draft step pays the draft's full step cost, fixed per-layer
  overhead included.
* ``fused``: the same, with the draft compiled into the target's step ("the draft model
  and target model are fused into a single compiled model", AWS Neuron NxD Inference
  feature guide, aws-neuron/aws-neuron-sdk@81ce03ae:
  libraries/nxd-inference/developer_guides/feature-guide.rst). Modelling assumption:
  the draft's steps then cost their roofline (compute, memory, links) but not the
  per-layer launch/sync overhead the calibration fits per engine step. AWS's Trn2 runs
  of Llama-3.3-70B and Llama-3.1-405B use it with Llama-3.2-1B and k = 7.
* ``mtp``: the model's own MTP module (DeepSeek-V3/R1: one extra transformer block
  sharing the embedding and output head), so one proposal costs about one more layer
  of the target's step.

Default acceptance rates (per proposed token; override with ``:a``):

* ``mtp`` 0.85 — DeepSeek-V3 Technical Report (arXiv 2412.19437, sec. 5.4.3): "the
  acceptance rate of the second token prediction ranges between 85% and 90%"; we take
  the low end. DeepSeek uses k = 1.
* ``draft`` 0.8 — an **assumption** for a same-family draft ~1/50 of the target's size:
  no source read publishes the per-token acceptance of AWS's Llama-3.2-1B runs. EAGLE
  (arXiv 2401.15077) and Medusa (arXiv 2401.10774) report 2-4 accepted tokens per step on
  chat benchmarks, which at k = 4-7 is a per-token rate of about 0.6-0.8. Give ``:a`` when
  you know your traffic's rate (vLLM and SGLang log it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tokenfleet.errors import TokenfleetError

SpeculationKind = Literal["draft", "fused", "mtp"]

DEFAULT_ACCEPTANCE: dict[str, float] = {"mtp": 0.85, "draft": 0.8, "fused": 0.8}
DEFAULT_K: dict[str, int] = {"mtp": 1, "draft": 4, "fused": 4}
MAX_K = 16

SYNTAX = ("draft:MODEL[:k[:a]] (a smaller catalog model proposes k tokens, accepted at rate a), "
          "fused:MODEL[:k[:a]] (the same draft compiled into the target's step, as AWS Neuron's "
          "fused speculation) or mtp[:k[:a]] (the model's multi-token-prediction head); "
          "defaults k=4, a=0.8 for a draft (assumption), k=1, a=0.85 for MTP (DeepSeek-V3)")


@dataclass(frozen=True)
class Speculation:
    """A speculative-decoding setting: ``k`` proposed tokens per step, each accepted at
    rate ``acceptance``, proposed by ``draft_model`` (kind ``draft``) or an MTP head."""

    kind: SpeculationKind
    k: int
    acceptance: float
    draft_model: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_K:
            raise TokenfleetError(f"speculative k must be 1..{MAX_K} proposed tokens, got {self.k}")
        if not 0.0 <= self.acceptance <= 1.0:
            raise TokenfleetError(
                f"speculative acceptance rate must be within 0..1, got {self.acceptance}")
        if (self.kind != "mtp") != bool(self.draft_model):
            raise TokenfleetError("a draft speculation names its draft model; MTP names none")

    @property
    def tokens_per_step(self) -> float:
        return expected_tokens_per_step(self.k, self.acceptance)

    def label(self) -> str:
        head = "mtp" if self.kind == "mtp" else f"{self.kind}:{self.draft_model}"
        return f"{head}:{self.k}:{self.acceptance:g}"


def expected_tokens_per_step(k: int, acceptance: float) -> float:
    """Mean tokens one verify step yields: ``(1 - a^(k+1)) / (1 - a)`` (k + 1 at a = 1)."""
    a = acceptance
    if a >= 1.0:
        return float(k + 1)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def step_time_s(verify_s: float, draft_step_s: float, k: int) -> float:
    """Seconds of one speculative step: the target's verify pass plus ``k`` draft steps."""
    return verify_s + k * draft_step_s


def tpot_s(verify_s: float, draft_step_s: float, k: int, acceptance: float) -> float:
    """Time per output token of a speculative step (seconds)."""
    return step_time_s(verify_s, draft_step_s, k) / expected_tokens_per_step(k, acceptance)


def _number(text: str, what: str, kind: type) -> float:
    try:
        return kind(text)
    except ValueError:
        raise TokenfleetError(f"speculative {what} '{text}' is not a number; "
                              f"expected {SYNTAX}") from None


def parse_speculation(text: str) -> Speculation:
    """Parse ``draft:MODEL[:k[:a]]`` or ``mtp[:k[:a]]``."""
    parts = [p.strip() for p in text.strip().split(":")]
    kind = parts[0].lower()
    if kind == "mtp":
        rest, model = parts[1:], None
    elif kind in ("draft", "fused"):
        if len(parts) < 2 or not parts[1]:
            raise TokenfleetError(f"speculative '{text}': a draft needs a model; expected {SYNTAX}")
        rest, model = parts[2:], parts[1]
    else:
        raise TokenfleetError(f"speculative '{text}': unknown kind '{parts[0]}'; expected {SYNTAX}")
    if len(rest) > 2:
        raise TokenfleetError(f"speculative '{text}': too many fields; expected {SYNTAX}")
    k = int(_number(rest[0], "k", int)) if rest and rest[0] else DEFAULT_K[kind]
    a = float(_number(rest[1], "acceptance", float)) if len(rest) > 1 else DEFAULT_ACCEPTANCE[kind]
    return Speculation(kind, k, a, model)  # type: ignore[arg-type]
