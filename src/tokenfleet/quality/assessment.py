"""The precision-quality report and the rules the planner checks against it.

Pure pydantic: the planner imports this module, so it must never import PyTorch.

A report (written by ``tokenfleet validate-precision --out report.json``) holds, for one
model, one entry per measured (format, what was quantized) combination with quality
metrics against the FP32 reference. A scenario tier can carry a rule such as
``{"max_kl": 0.05}`` or ``{"min_cosine": 0.99, "format": "nvfp4"}``; :func:`check_precision`
turns (report, planner precision, rule) into ``(allowed, why)``.

Metric definitions (all against the same model in FP32):

* ``cosine_mean`` / ``cosine_min``: cosine similarity between each text's pooled
  embedding and its reference embedding, averaged / worst over the texts.
* ``knn_agreement@10``: for each text, the fraction of its 10 nearest neighbours (cosine,
  itself excluded) in the reference space that are still among its 10 nearest in the
  quantized space; averaged over texts.
* ``ppl_ref`` / ``ppl``: perplexity, ``exp(mean next-token NLL)`` over every predicted
  token of every text; ``ppl_delta_pct = 100 * (ppl / ppl_ref - 1)``.
* ``kl_mean``: mean over predicted tokens of ``KL(P_ref || P_quant)`` of the next-token
  distributions (nats).
* ``top1_agreement``: fraction of predicted tokens whose argmax token is unchanged.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tokenfleet import __version__
from tokenfleet.errors import TokenfleetError
from tokenfleet.fileio import write_text
from tokenfleet.quality.formats import FORMAT_NAMES, PLANNER_FORMATS, PLANNER_PRECISIONS

Kind = Literal["causal-lm", "encoder"]

_CONFIG = ConfigDict(
    extra="forbid",
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
    # A NaN metric (an FP16 overflow, say) must survive the round trip as NaN, and then
    # fail every threshold, rather than turn into null and read as "not measured".
    ser_json_inf_nan="constants",
)


class DataInfo(BaseModel):
    """The text set the metrics were measured on."""

    model_config = _CONFIG
    path: str
    texts: int = Field(ge=1)
    tokens: int = Field(ge=0, description="non-padding tokens over all texts")


class FormatResult(BaseModel):
    """Quality of one format applied to one set of tensors, against the FP32 reference."""

    model_config = _CONFIG
    format: str
    weights: bool = True
    activations: bool = False
    kv_cache: bool = False
    scheme: str = ""
    group_size: int | None = None
    quantized_layers: int | None = None
    seconds: float | None = Field(None, description="wall time of this evaluation (s)")
    # encoder metrics
    cosine_mean: float | None = None
    cosine_min: float | None = None
    knn_agreement_at_10: float | None = Field(None, alias="knn_agreement@10")
    # causal-LM metrics
    ppl_ref: float | None = None
    ppl: float | None = None
    ppl_delta_pct: float | None = None
    kl_mean: float | None = Field(None, description="nats per predicted token")
    top1_agreement: float | None = None

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in FORMAT_NAMES:
            raise ValueError(f"unknown format '{v}'; allowed: {', '.join(FORMAT_NAMES)}")
        return v

    @property
    def scope(self) -> str:
        """What was quantized, e.g. ``weights+activations``."""
        parts = [
            name
            for name, on in (
                ("weights", self.weights),
                ("activations", self.activations),
                ("kv-cache", self.kv_cache),
            )
            if on
        ]
        return "+".join(parts) or "nothing"


class QualityReport(BaseModel):
    """One model's quality under each measured format (the JSON that ``plan`` reads)."""

    model_config = _CONFIG
    model: str
    kind: Kind
    reference: Literal["fp32"] = "fp32"
    data: DataInfo
    scope: str = Field(
        default="weights and inputs of linear layers; output head, embeddings and norms stay FP32",
        description="which tensors a format is applied to",
    )
    results: list[FormatResult]
    tokenfleet_version: str = __version__
    created: str = Field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )

    def entries(self, fmt: str) -> list[FormatResult]:
        """All results measured for ``fmt``."""
        return [r for r in self.results if r.format == fmt]

    def to_json(self) -> str:
        """The report as indented JSON (``knn_agreement@10`` spelled with its alias)."""
        return self.model_dump_json(indent=2)

    def write(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        write_text(path, self.to_json() + "\n")


def load_report(path: str | Path) -> QualityReport:
    """Read a report written by ``validate-precision``; bad files raise TokenfleetError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TokenfleetError(f"cannot read quality report {p}: {e.strerror}") from None
    try:
        return QualityReport.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as e:
        raise TokenfleetError(f"{p} is not a tokenfleet quality report: {e}") from None


# rule key -> (report field, comparison, which model kind measures it)
_THRESHOLDS: dict[str, tuple[str, Literal["<=", ">="], Kind]] = {
    "max_kl": ("kl_mean", "<=", "causal-lm"),
    "max_ppl_delta_pct": ("ppl_delta_pct", "<=", "causal-lm"),
    "min_top1_agreement": ("top1_agreement", ">=", "causal-lm"),
    "min_cosine": ("cosine_mean", ">=", "encoder"),
    "min_cosine_min": ("cosine_min", ">=", "encoder"),
    "min_knn_agreement": ("knn_agreement_at_10", ">=", "encoder"),
}


class PrecisionRule(BaseModel):
    """When a reduced precision is acceptable: every applicable threshold must hold.

    Thresholds for the other model kind are skipped (so one rule such as
    ``{"max_kl": 0.05, "min_cosine": 0.99}`` can serve LLM and embedding tiers), but at
    least one must apply. ``format`` picks the measured format that stands for a planner
    precision (``nvfp4`` or ``mxfp4`` for fp4); ``activations`` / ``kv_cache`` pick
    which measurement to use (unset: the most aggressive one in the report).
    """

    model_config = ConfigDict(extra="forbid")
    max_kl: float | None = Field(None, ge=0, description="nats per token")
    max_ppl_delta_pct: float | None = Field(None, description="percent")
    min_top1_agreement: float | None = Field(None, ge=0, le=1)
    min_cosine: float | None = Field(None, ge=-1, le=1)
    min_cosine_min: float | None = Field(None, ge=-1, le=1)
    min_knn_agreement: float | None = Field(None, ge=0, le=1)
    format: str | None = None
    activations: bool | None = None
    kv_cache: bool | None = None

    @model_validator(mode="after")
    def _has_threshold(self) -> PrecisionRule:
        if all(getattr(self, key) is None for key in _THRESHOLDS):
            raise ValueError(f"a precision rule needs at least one of: {', '.join(_THRESHOLDS)}")
        if self.format is not None and self.format not in FORMAT_NAMES:
            raise ValueError(f"unknown format '{self.format}'; allowed: {', '.join(FORMAT_NAMES)}")
        return self


def parse_rule(rule: PrecisionRule | dict[str, Any]) -> PrecisionRule:
    """Validate a rule given as a dict (from scenario YAML); errors raise TokenfleetError."""
    if isinstance(rule, PrecisionRule):
        return rule
    try:
        return PrecisionRule.model_validate(rule)
    except ValidationError as e:
        raise TokenfleetError(f"invalid precision rule {rule!r}: {e}") from None


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def check_rule(
    report: QualityReport, fmt: str, rule: PrecisionRule | dict[str, Any]
) -> tuple[bool, str]:
    """Does the measured quality of ``fmt`` in ``report`` satisfy ``rule``?

    Returns ``(allowed, why)``; ``why`` names the measurement used and every threshold with
    its number. A format the report did not measure is not allowed. A rule none of whose
    thresholds applies to the report's model kind raises TokenfleetError (a misconfigured
    scenario, not a quality verdict).
    """
    r = parse_rule(rule)
    candidates = [
        e
        for e in report.entries(fmt)
        if (r.activations is None or e.activations == r.activations)
        and (r.kv_cache is None or e.kv_cache == r.kv_cache)
    ]
    wanted = (
        f"{fmt}"
        + ("" if r.activations is None else f", activations={str(r.activations).lower()}")
        + ("" if r.kv_cache is None else f", kv_cache={str(r.kv_cache).lower()}")
    )
    if not candidates:
        return False, (
            f"forbidden: quality report for {report.model} has no result for {wanted} "
            f"(run `tokenfleet validate-precision --formats {fmt}"
            f"{' --activations' if r.activations else ''}{' --kv-cache' if r.kv_cache else ''}`)"
        )
    # Several measurements qualify: judge on the one that quantizes the most (worst case).
    entry = max(candidates, key=lambda e: (e.weights + e.activations + e.kv_cache, e.kv_cache))
    checks, skipped = [], []
    allowed = True
    for key, (field, op, kind) in _THRESHOLDS.items():
        limit = getattr(r, key)
        if limit is None:
            continue
        if kind != report.kind:
            skipped.append(key)
            continue
        value = getattr(entry, field)
        name = "knn_agreement@10" if field == "knn_agreement_at_10" else field
        if value is None:
            allowed = False
            checks.append(f"{name} not measured")
            continue
        # Written so that NaN fails both directions.
        ok = value <= limit if op == "<=" else value >= limit
        allowed = allowed and ok
        bad_op = ">" if op == "<=" else "<"
        checks.append(f"{name} {_fmt(value)} {op if ok else bad_op} {_fmt(limit)}")
    if not checks:
        raise TokenfleetError(
            f"precision rule {r.model_dump(exclude_none=True)} has no threshold that applies "
            f"to {report.kind} models; use "
            + ", ".join(k for k, v in _THRESHOLDS.items() if v[2] == report.kind)
        )
    verdict = "allowed" if allowed else "forbidden"
    why = f"{verdict}: {fmt} ({entry.scope}) on {report.model}: " + "; ".join(checks)
    return allowed, why


_DEFAULT_ACTIVATIONS: dict[str, bool | None] = {
    # FP8 / FP4 peak FLOPs need FP8 / FP4 activations too; planner int8 is weight-only.
    "fp8": True,
    "fp4": True,
    "int8": False,
    "bf16": None,
}


def check_precision(
    report: QualityReport,
    precision: str,
    rule: PrecisionRule | dict[str, Any],
    *,
    fmt: str | None = None,
) -> tuple[bool, str]:
    """May a tier serve ``report.model`` at planner ``precision`` (bf16/fp8/fp4/int8)?

    The measured format is ``fmt``, else the rule's ``format``, else the first of
    :data:`~tokenfleet.quality.formats.PLANNER_FORMATS` present in the report (fp8 ->
    fp8-e4m3, fp4 -> nvfp4 then mxfp4, int8 -> int8). Unless the rule says otherwise, fp8
    and fp4 are judged on a weights+activations measurement (their tensor cores quantize
    both) and int8 on a weight-only one (the planner's int8 is W8A16).
    """
    p = precision.lower()
    if p not in PLANNER_PRECISIONS:
        raise TokenfleetError(
            f"unknown planner precision '{precision}'; allowed: {', '.join(PLANNER_PRECISIONS)}"
        )
    r = parse_rule(rule)
    options = PLANNER_FORMATS[p]
    chosen = fmt or r.format
    if chosen is None:
        measured = [o for o in options if report.entries(o)]
        chosen = measured[0] if measured else options[0]
    if chosen not in options:
        raise TokenfleetError(
            f"format '{chosen}' cannot stand for precision {p}; use one of: {', '.join(options)}"
        )
    if r.activations is None:
        r = r.model_copy(update={"activations": _DEFAULT_ACTIVATIONS[p]})
    allowed, why = check_rule(report, chosen, r)
    return allowed, f"{p}: {why}"
