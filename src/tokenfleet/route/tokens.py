"""How long a request is, as the gateway sizes it for routing.

* Prompt tokens: with the model's ``tokenizer.json`` (Hugging Face ``tokenizers``), the
  real count of the prompt's text (chat messages' text parts, or the completion prompt;
  token-id prompts count their ids); without one, the stated estimate of
  :mod:`tokenfleet.route.openai_api` (ceil(characters / 4)). Chat templates add a few
  tokens per message that neither counts.
* Output tokens: most clients send a large ``max_tokens`` ceiling (or none), which says
  little about the answer's length. :class:`OutputLengthPredictor` predicts it from the
  tier's traffic in the plan: the peak-weighted mean output length of the tier's buckets
  for that prompt size, capped by the client's ``max_tokens``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.schema import Plan
from tokenfleet.route.openai_api import DEFAULT_MAX_TOKENS, Kind, approx_tokens
from tokenfleet.routing.affinity import prompt_blocks, text_blocks


def prompt_texts(kind: Kind, body: dict[str, Any]) -> list[str] | int:
    """The prompt's texts, or its token count when it is given as token ids."""
    if kind == "chat":
        out = []
        for m in body.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out.extend(p["text"] for p in content
                           if isinstance(p, dict) and isinstance(p.get("text"), str))
        return out
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
        return len(prompt)
    if isinstance(prompt, list) and all(isinstance(p, list) for p in prompt):
        return sum(len(p) for p in prompt)
    return []


class TokenCounter:
    """Counts prompt tokens with a tokenizer when one is given, else estimates."""

    def __init__(self, tokenizer_json: str | Path | None = None) -> None:
        self._tok: Any = None
        self.source = "estimate: ceil(characters / 4)"
        if tokenizer_json is not None:
            try:
                from tokenizers import Tokenizer
            except ImportError:
                raise TokenfleetError("counting tokens with a tokenizer.json needs the "
                                      "'tokenizers' package (pip install tokenizers)") from None
            try:
                self._tok = Tokenizer.from_file(str(tokenizer_json))
            except Exception as e:  # tokenizers raises its own Exception subclass
                raise TokenfleetError(f"{tokenizer_json}: not a tokenizer.json ({e})") from None
            self.source = f"tokenizer {tokenizer_json}"

    def prefix_blocks(self, kind: Kind, body: dict[str, Any]) -> list[int]:
        """The prompt's prefix-block hashes for cache-affinity routing: 512-token blocks
        of its token ids (given as ids, or from the tokenizer), else blocks of its text
        (:func:`~tokenfleet.routing.affinity.text_blocks`)."""
        prompt = body.get("prompt") if kind == "completion" else None
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            return prompt_blocks(prompt)
        texts = prompt_texts(kind, body)
        if isinstance(texts, int):  # a batch of token-id prompts: no one prefix
            return []
        if self._tok is None:
            return text_blocks(texts)
        ids = [i for e in self._tok.encode_batch(texts, add_special_tokens=False)
               for i in e.ids]
        return prompt_blocks(ids)

    def count(self, kind: Kind, body: dict[str, Any]) -> int:
        texts = prompt_texts(kind, body)
        if isinstance(texts, int):
            return texts
        if self._tok is None:
            return sum(approx_tokens(t) for t in texts)
        return sum(len(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False))


@dataclass(frozen=True)
class _Band:
    in_lo: float  # prompt tokens, [in_lo, in_hi); a plan without edges: both the
    in_hi: float  # representative prompt length of its split (matched by nearness)
    output_len: float  # peak-weighted mean output length of the tier's buckets here


class OutputLengthPredictor:
    """Expected output tokens of a request of a tier, from the plan's traffic split.

    Prompt bands come from the plan's bucket edges (numbers, never parsed from labels);
    a plan given by hand without edges matches a prompt to the split whose
    representative prompt length is nearest in log space, as the router does."""

    def __init__(self, plan: Plan) -> None:
        by_label = {b.label: b for b in plan.buckets.buckets} if plan.buckets else {}
        acc: dict[tuple[str, float, float], tuple[float, float]] = {}
        for s in plan.traffic_split:
            b = by_label.get(s.bucket)
            lo, hi = ((float(b.input_lo), math.inf if b.input_hi is None else float(b.input_hi))
                      if b is not None else (float(s.input_len), float(s.input_len)))
            w, wl = acc.get((s.tier, lo, hi), (0.0, 0.0))
            acc[(s.tier, lo, hi)] = (w + s.peak_requests_per_s,
                                     wl + s.peak_requests_per_s * s.output_len)
        self._bands: dict[str, list[_Band]] = {}
        self._tier_mean: dict[str, float] = {}
        for (tier, lo, hi), (w, wl) in acc.items():
            if w > 0:
                self._bands.setdefault(tier, []).append(_Band(lo, hi, wl / w))
        for tier, bands in self._bands.items():
            ws = [acc[(tier, b.in_lo, b.in_hi)] for b in bands]
            self._tier_mean[tier] = sum(wl for _, wl in ws) / sum(w for w, _ in ws)

    def _band(self, tier: str, prompt_tokens: int) -> _Band | None:
        bands = self._bands.get(tier)
        if not bands:
            return None
        inside = next((b for b in bands if b.in_lo <= prompt_tokens < b.in_hi), None)
        if inside is not None or bands[0].in_lo < bands[0].in_hi:
            return inside
        x = math.log1p(prompt_tokens)
        return min(bands, key=lambda b: abs(math.log1p(b.in_lo) - x))

    def predict(self, tier: str, prompt_tokens: int, max_tokens: int | None) -> int:
        """Expected output tokens, never above the client's ``max_tokens``."""
        band = self._band(tier, prompt_tokens)
        guess = band.output_len if band else self._tier_mean.get(tier, DEFAULT_MAX_TOKENS)
        n = max(1, round(guess))
        return min(n, max_tokens) if max_tokens is not None else n
