"""Quality metrics between a reference model's outputs and a quantized model's outputs.

Definitions are documented once, in :mod:`tokenfleet.quality.assessment`; this module
computes them from tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average of the token vectors ``[b, t, d]`` over real tokens (``mask`` ``[b, t]``)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def cosine_per_row(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of matching rows of ``a`` and ``b`` (``[n, d]`` each), in float64."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def knn_agreement(reference: Tensor, test: Tensor, k: int = 10) -> float:
    """Mean overlap of each row's ``k`` nearest neighbours (cosine, self excluded).

    For row ``i`` take the ``k`` most similar other rows in ``reference`` and in ``test``;
    the score is ``|both| / k``, averaged over rows. 1.0 means every neighbourhood (a
    retrieval result list) is unchanged as a set.
    """
    n = reference.shape[0]
    if n <= k:
        raise ValueError(f"k-NN agreement@{k} needs more than {k} texts, got {n}")

    def neighbours(x: Tensor) -> Tensor:
        x = torch.nn.functional.normalize(x.double(), dim=-1)
        sim = x @ x.T
        sim.fill_diagonal_(float("-inf"))  # a text is not its own neighbour
        return sim.topk(k, dim=-1).indices

    ref, tst = neighbours(reference), neighbours(test)
    shared = (ref.unsqueeze(-1) == tst.unsqueeze(-2)).any(dim=-1).sum(dim=-1)
    return float(shared.double().mean() / k)


def next_token_log_probs(
    logits: Tensor, input_ids: Tensor, attention_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Log-probabilities and targets of every predicted position, flattened.

    Position ``j`` predicts token ``j + 1``; it counts when both are real tokens.
    Returns ``(log_probs [n, vocab] float32, targets [n] int64)``.
    """
    ids_mask = attention_mask.bool()
    valid = ids_mask[:, :-1] & ids_mask[:, 1:]
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)[valid]
    return log_probs, input_ids[:, 1:][valid]


@dataclass
class CausalTotals:
    """Running sums over predicted tokens for the causal-LM metrics."""

    tokens: int = 0
    nll_ref: float = 0.0
    nll: float = 0.0
    kl: float = 0.0
    top1_same: int = 0

    def add(self, ref_log_probs: Tensor, log_probs: Tensor, targets: Tensor) -> None:
        """Accumulate one batch: ``[n, vocab]`` log-probs of both models, ``[n]`` targets."""
        ref, cur = ref_log_probs.double(), log_probs.double()
        pick = targets.unsqueeze(-1)
        self.tokens += int(targets.numel())
        self.nll_ref -= float(ref.gather(-1, pick).sum())
        self.nll -= float(cur.gather(-1, pick).sum())
        # KL(P_ref || P_q) = sum_v p_ref (log p_ref - log p_q); exp(-inf) * (...) would be
        # NaN for a token with zero reference probability, so use xlogy-style masking.
        p_ref = ref.exp()
        terms = torch.where(p_ref > 0, p_ref * (ref - cur), torch.zeros_like(ref))
        self.kl += float(terms.sum())
        self.top1_same += int((ref.argmax(-1) == cur.argmax(-1)).sum())

    def metrics(self) -> dict[str, float]:
        """``ppl_ref``, ``ppl``, ``ppl_delta_pct``, ``kl_mean`` and ``top1_agreement``."""
        if self.tokens == 0:
            raise ValueError("no predicted tokens: every text is shorter than two tokens")
        ppl_ref = float(torch.tensor(self.nll_ref / self.tokens, dtype=torch.float64).exp())
        ppl = float(torch.tensor(self.nll / self.tokens, dtype=torch.float64).exp())
        return {
            "ppl_ref": ppl_ref,
            "ppl": ppl,
            "ppl_delta_pct": 100.0 * (ppl / ppl_ref - 1.0),
            "kl_mean": self.kl / self.tokens,
            "top1_agreement": self.top1_same / self.tokens,
        }
