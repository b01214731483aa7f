"""``tokenfleet validate-precision``: measure FP8/FP4/INT quality loss on a real model.

Presentation only: the measurement is :mod:`tokenfleet.quality.validate`. PyTorch is
imported inside the command, never when the CLI starts, so planning works without it.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from tokenfleet.errors import TokenfleetError
from tokenfleet.quality.formats import FORMAT_NAMES, INT4_DEFAULT_GROUP, parse_formats
from tokenfleet.quality.sources import MODEL_SHORTCUTS, read_texts, resolve_model_dir

if TYPE_CHECKING:
    from tokenfleet.quality.assessment import QualityReport
    from tokenfleet.quality.validate import PrecisionValidator

_QUALITY_PACKAGES = {"torch", "transformers", "safetensors", "tokenizers"}


class ModelKind(str, Enum):
    """What the model is; ``auto`` reads the saved architecture."""

    auto = "auto"
    causal_lm = "causal-lm"
    encoder = "encoder"


def _import_validator() -> type[PrecisionValidator]:
    """The validator class; importing it imports torch, so missing extras surface here."""
    try:
        from tokenfleet.quality.validate import PrecisionValidator
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in _QUALITY_PACKAGES:
            raise TokenfleetError(
                f"validate-precision needs {e.name}, which is not installed: "
                "pip install tokenfleet[quality]"
            ) from None
        raise
    return PrecisionValidator


def _quiet_transformers() -> None:
    """No network, no loading bars or warnings from transformers in our output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _num(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report_table(report: QualityReport) -> Table:
    """A Rich table of the report's results (one row per measurement)."""
    table = Table(
        title=(
            f"{report.model} ({report.kind}) vs FP32 — {report.data.texts} texts, "
            f"{report.data.tokens} tokens"
        )
    )
    table.caption = "quantized: w = weights, act = linear-layer inputs, kv = KV cache"
    table.add_column("format", no_wrap=True)
    table.add_column("quantized", no_wrap=True)
    heads: tuple[str, ...]
    if report.kind == "encoder":
        heads = ("cosine mean", "cosine min", "kNN@10")
    else:
        heads = ("ppl", "Δppl %", "KL (nats)", "top-1")
    for head in (*heads, "time (s)"):
        table.add_column(head, justify="right")
    for r in report.results:
        cells: tuple[str, ...]
        if report.kind == "encoder":
            cells = (
                _num(r.cosine_mean, ".5f"),
                _num(r.cosine_min, ".5f"),
                _num(r.knn_agreement_at_10, ".3f"),
            )
        else:
            cells = (
                _num(r.ppl, ".3f"),
                _num(r.ppl_delta_pct, "+.3f"),
                _num(r.kl_mean, ".3g"),
                _num(r.top1_agreement, ".4f"),
            )
        scope = "+".join(
            name
            for name, on in (("w", r.weights), ("act", r.activations), ("kv", r.kv_cache))
            if on
        )
        table.add_row(r.format, scope, *cells, _num(r.seconds, ".1f"))
    return table


def register(app: typer.Typer) -> None:
    """Add ``validate-precision`` to the app."""

    @app.command("validate-precision")
    def validate_precision(
        model: str = typer.Option(
            ...,
            "--model",
            help="Local Hugging Face model directory, or the shortcut "
            + ", ".join(MODEL_SHORTCUTS)
            + " (installed with the 'quality' extra). Never downloads.",
        ),
        formats: str = typer.Option(
            "bf16,fp8-e4m3,mxfp4,nvfp4",
            "--formats",
            help="Comma-separated number formats, or 'all'. Allowed: "
            + ", ".join(FORMAT_NAMES)
            + ".",
        ),
        data: Path | None = typer.Option(
            None, "--data", help="Text file, one text per line (default: 200 bundled sentences)."
        ),
        activations: bool = typer.Option(
            False,
            "--activations/--no-activations",
            help="Also quantize the inputs of every linear layer, dynamically per forward pass.",
        ),
        kv_cache: bool = typer.Option(
            False, "--kv-cache", help="Also quantize keys and values in attention (causal LMs)."
        ),
        group_size: int = typer.Option(
            INT4_DEFAULT_GROUP, "--group-size", help="INT4 elements per scale."
        ),
        kind: ModelKind = typer.Option(ModelKind.auto, "--kind", help="Model kind."),
        batch_size: int = typer.Option(16, "--batch-size", help="Texts per forward pass."),
        max_length: int = typer.Option(128, "--max-length", help="Truncate texts to N tokens."),
        limit: int | None = typer.Option(None, "--limit", help="Use only the first N texts."),
        threads: int | None = typer.Option(
            None,
            "--threads",
            help="PyTorch CPU threads (default: PyTorch's choice). On a shared machine 1 "
            "can be much faster than oversubscribed cores.",
        ),
        out: Path | None = typer.Option(None, "--out", help="Write the JSON report here."),
        as_json: bool = typer.Option(False, "--json", help="Print the JSON report to stdout."),
    ) -> None:
        """Measure what each number format costs in quality on a real model, against FP32.

        Encoders: cosine similarity of embeddings and k-NN agreement. Causal LMs:
        perplexity change, KL divergence and top-1 agreement of next-token predictions.
        The JSON report (--out) is what `plan` reads to allow or forbid a precision.
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        # Cheap checks first: a typo should not cost a PyTorch import.
        names = parse_formats(formats)
        texts, label = read_texts(data, limit=limit)
        model_dir = resolve_model_dir(model)
        validator_cls = _import_validator()
        _quiet_transformers()
        if threads is not None:
            import torch

            if threads < 1:
                raise TokenfleetError(f"--threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)

        err = Console(stderr=True)
        with err.status(f"loading {model_dir}"):
            validator = validator_cls(
                model_dir,
                texts,
                kind=kind.value,
                batch_size=batch_size,
                max_length=max_length,
                model_name=model,
                data_label=label,
            )
        if kv_cache and validator.kind != "causal-lm":
            raise TokenfleetError(f"--kv-cache applies to causal LMs; {model} is an encoder")

        results = []
        columns = (
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("reference", total=validator.steps(len(names)))

            def step(label: str) -> None:
                bar.update(task, advance=1, description=label)

            for name in names:
                results.append(
                    validator.evaluate(
                        name,
                        activations=activations,
                        kv_cache=kv_cache,
                        group_size=group_size,
                        progress=step,
                    )
                )
        report = validator.report(results)
        if out is not None:
            report.write(out)
            err.print(f"wrote {out}")
        if as_json:
            typer.echo(report.to_json())
        else:
            Console().print(report_table(report))
