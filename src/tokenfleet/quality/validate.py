"""Measure what each number format costs in quality on a real Hugging Face model.

:class:`PrecisionValidator` loads a local model once in FP32 (the reference), runs the
text set through it, then, for each requested format, fake-quantizes the model
(:mod:`tokenfleet.quality.fakequant`), runs the same texts and compares:

* encoders (sentence embedders such as all-MiniLM-L6-v2): pooled embeddings — cosine
  similarity to the reference and k-NN agreement over the text set;
* causal LMs: next-token distributions — perplexity change, KL divergence, top-1 agreement.

The library only computes; ``progress`` lets the caller draw a bar.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenfleet.errors import TokenfleetError
from tokenfleet.quality.assessment import DataInfo, FormatResult, Kind, QualityReport
from tokenfleet.quality.fakequant import fake_quantized
from tokenfleet.quality.formats import INT4_DEFAULT_GROUP, get_format
from tokenfleet.quality.metrics import (
    CausalTotals,
    cosine_per_row,
    knn_agreement,
    mean_pool,
    next_token_log_probs,
)
from tokenfleet.quality.quantize import get_quantizer
from tokenfleet.quality.sources import read_texts, resolve_model_dir

Tensor = torch.Tensor
Progress = Callable[[str], None]
"""Called once per processed batch with a label ('reference' or the format name)."""

KNN_K = 10

DEFAULT_REFERENCE_CACHE_BYTES = 1 << 30
"""Reference log-probs of causal LMs are kept in memory up to this size (bytes); past it
the reference model is kept instead (a second copy) and re-run per format."""


def detect_kind(config: object) -> Kind:
    """``causal-lm`` when the saved architecture is a causal LM head, else ``encoder``."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    return "encoder"


def _pooling_mode(model_dir: Path) -> str:
    """Pooling of a sentence-transformers model directory ('mean' unless it says 'cls')."""
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.is_file():
        settings = json.loads(cfg.read_text(encoding="utf-8"))
        if settings.get("pooling_mode_cls_token") and not settings.get("pooling_mode_mean_tokens"):
            return "cls"
    return "mean"


@dataclass
class _Batch:
    inputs: dict[str, Tensor]

    @property
    def mask(self) -> Tensor:
        return self.inputs["attention_mask"]


class PrecisionValidator:
    """One loaded model + text set; :meth:`evaluate` measures one format at a time.

    Args:
        model: local Hugging Face model directory, or a shortcut (``all-minilm-l6-v2``).
        texts: the evaluation texts.
        kind: ``auto`` (from the saved architecture), ``causal-lm`` or ``encoder``.
        batch_size: texts per forward pass.
        max_length: texts are truncated to this many tokens.
        model_name: how the report names the model (default: ``model`` as given).
        data_label: how the report names the text set.
        reference_cache_bytes: memory budget for cached causal-LM reference log-probs.
    """

    def __init__(
        self,
        model: str | Path,
        texts: Sequence[str],
        *,
        kind: str = "auto",
        batch_size: int = 16,
        max_length: int = 128,
        model_name: str | None = None,
        data_label: str = "<texts>",
        reference_cache_bytes: int = DEFAULT_REFERENCE_CACHE_BYTES,
    ) -> None:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1 or max_length < 2:
            raise TokenfleetError("--batch-size must be >= 1 and --max-length >= 2")
        if not texts:
            raise TokenfleetError("no texts to evaluate on")
        self.model_dir = resolve_model_dir(model)
        self.model_name = model_name or str(model)
        self.texts = list(texts)
        self.data_label = data_label
        try:
            config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise TokenfleetError(f"cannot load {self.model_dir}: {e}") from None
        if kind not in ("auto", "causal-lm", "encoder"):
            raise TokenfleetError(f"--kind must be auto, causal-lm or encoder, got '{kind}'")
        self.kind: Kind = detect_kind(config) if kind == "auto" else kind  # type: ignore[assignment]
        if self.kind == "encoder" and getattr(config, "is_encoder_decoder", False):
            raise TokenfleetError(
                f"{self.model_dir} is an encoder-decoder model; only encoders and causal LMs "
                "are supported"
            )
        loader = AutoModelForCausalLM if self.kind == "causal-lm" else AutoModel
        try:
            self.model = loader.from_pretrained(
                self.model_dir, dtype=torch.float32, local_files_only=True
            ).eval()
        except (OSError, ValueError) as e:
            raise TokenfleetError(f"cannot load model weights from {self.model_dir}: {e}") from None
        self.pooling = _pooling_mode(self.model_dir)
        if self.kind == "encoder" and len(self.texts) <= KNN_K:
            raise TokenfleetError(
                f"an encoder needs more than {KNN_K} texts (k-NN agreement@{KNN_K}), "
                f"got {len(self.texts)}"
            )
        self.batches = self._tokenize(tokenizer, batch_size, max_length)
        self.tokens = int(sum(int(b.mask.sum()) for b in self.batches))
        self._cache_budget = reference_cache_bytes
        self._reference_done = False
        self._ref_embeddings: Tensor | None = None
        self._ref_log_probs: list[tuple[Tensor, Tensor] | None] = []
        self._reference_model: torch.nn.Module | None = None

    def _tokenize(self, tokenizer: Any, batch_size: int, max_length: int) -> list[_Batch]:
        """Tokenize the texts into padded batches (right padding, attention masks)."""
        tok = copy.copy(tokenizer)
        if getattr(tok, "pad_token", None) is None:
            if getattr(tok, "eos_token", None) is not None:
                tok.pad_token = tok.eos_token  # padded positions are masked out anyway
            else:
                batch_size = 1  # nothing to pad with: one text per batch needs no padding
        tok.padding_side = "right"
        keep = (
            ("input_ids", "attention_mask")
            if self.kind == "causal-lm"
            else ("input_ids", "attention_mask", "token_type_ids")
        )
        batches = []
        for start in range(0, len(self.texts), batch_size):
            enc = tok(
                self.texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            batches.append(_Batch({k: v for k, v in enc.items() if k in keep}))
        return batches

    def steps(self, evaluations: int) -> int:
        """Progress steps (batches) of the reference pass plus ``evaluations`` formats."""
        return len(self.batches) * ((0 if self._reference_done else 1) + evaluations)

    # ---- forward passes -------------------------------------------------------------

    def _embed(self, model: torch.nn.Module, batch: _Batch) -> Tensor:
        hidden = model(**batch.inputs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, batch.mask)

    def _log_probs(self, model: torch.nn.Module, batch: _Batch) -> tuple[Tensor, Tensor]:
        logits = model(**batch.inputs, use_cache=False).logits
        return next_token_log_probs(logits, batch.inputs["input_ids"], batch.mask)

    def reference(self, progress: Progress | None = None) -> None:
        """Run the FP32 reference once (later calls do nothing)."""
        if self._reference_done:
            return
        with torch.no_grad():
            if self.kind == "encoder":
                out = []
                for batch in self.batches:
                    out.append(self._embed(self.model, batch))
                    if progress:
                        progress("reference")
                self._ref_embeddings = torch.cat(out)
            else:
                used = 0
                for batch in self.batches:
                    lp, targets = self._log_probs(self.model, batch)
                    if used + lp.numel() * lp.element_size() <= self._cache_budget:
                        self._ref_log_probs.append((lp, targets))
                        used += lp.numel() * lp.element_size()
                    else:
                        self._ref_log_probs.append(None)
                    if progress:
                        progress("reference")
                if any(entry is None for entry in self._ref_log_probs):
                    # Too large to cache: keep an unquantized copy to re-run per batch.
                    self._reference_model = copy.deepcopy(self.model)
        self._reference_done = True

    @property
    def reference_embeddings(self) -> Tensor:
        """FP32 pooled embeddings ``[texts, hidden]`` of an encoder (runs the reference)."""
        if self.kind != "encoder":
            raise TokenfleetError(f"{self.model_name} is a causal LM: it has no embeddings")
        self.reference()
        assert self._ref_embeddings is not None
        return self._ref_embeddings

    def _reference_batch(self, i: int) -> tuple[Tensor, Tensor]:
        cached = self._ref_log_probs[i]
        if cached is not None:
            return cached
        assert self._reference_model is not None
        return self._log_probs(self._reference_model, self.batches[i])

    # ---- evaluation -----------------------------------------------------------------

    def evaluate(
        self,
        fmt: str,
        *,
        activations: bool = False,
        kv_cache: bool = False,
        group_size: int = INT4_DEFAULT_GROUP,
        progress: Progress | None = None,
    ) -> FormatResult:
        """Quality of ``fmt`` on weights (+ activations, + KV cache) against FP32."""
        info = get_format(fmt)
        if kv_cache and self.kind != "causal-lm":
            raise TokenfleetError(
                f"--kv-cache applies to causal LMs; {self.model_name} is an encoder"
            )
        quantizer = get_quantizer(info.name, group_size=group_size)
        self.reference(progress)
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        with (
            torch.no_grad(),
            fake_quantized(
                self.model, quantizer, activations=activations, kv_cache=kv_cache
            ) as layers,
        ):
            if self.kind == "encoder":
                out = []
                for batch in self.batches:
                    out.append(self._embed(self.model, batch))
                    if progress:
                        progress(info.name)
                assert self._ref_embeddings is not None
                cos = cosine_per_row(self._ref_embeddings, torch.cat(out))
                metrics = {
                    "cosine_mean": float(cos.mean()),
                    "cosine_min": float(cos.min()),
                    "knn_agreement@10": knn_agreement(self._ref_embeddings, torch.cat(out), KNN_K),
                }
            else:
                totals = CausalTotals()
                for i, batch in enumerate(self.batches):
                    ref_lp, targets = self._reference_batch(i)
                    lp, _ = self._log_probs(self.model, batch)
                    totals.add(ref_lp, lp, targets)
                    if progress:
                        progress(info.name)
                metrics = totals.metrics()
        return FormatResult.model_validate(
            {
                "format": info.name,
                "weights": True,
                "activations": activations,
                "kv_cache": kv_cache,
                "scheme": quantizer.scheme,
                "group_size": group_size if info.name == "int4" else None,
                "quantized_layers": layers,
                "seconds": round(time.perf_counter() - start, 3),
                **metrics,
            }
        )

    def report(self, results: Sequence[FormatResult]) -> QualityReport:
        """Wrap results into the JSON report that ``plan`` reads."""
        return QualityReport(
            model=self.model_name,
            kind=self.kind,
            data=DataInfo(path=self.data_label, texts=len(self.texts), tokens=self.tokens),
            results=list(results),
        )


def validate_precision(
    model: str | Path,
    formats: Sequence[str],
    *,
    data: str | Path | None = None,
    activations: bool = False,
    kv_cache: bool = False,
    group_size: int = INT4_DEFAULT_GROUP,
    kind: str = "auto",
    batch_size: int = 16,
    max_length: int = 128,
    limit: int | None = None,
    progress: Progress | None = None,
) -> QualityReport:
    """Load ``model``, measure every format in ``formats``, return the report.

    ``data`` is a text file with one text per line (default: the bundled set); ``limit``
    keeps its first texts only.
    """
    texts, label = read_texts(data, limit=limit)
    validator = PrecisionValidator(
        model, texts, kind=kind, batch_size=batch_size, max_length=max_length, data_label=label
    )
    results = [
        validator.evaluate(
            f, activations=activations, kv_cache=kv_cache, group_size=group_size, progress=progress
        )
        for f in formats
    ]
    return validator.report(results)
