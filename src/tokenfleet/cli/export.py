"""`tokenfleet export`: write engine launch scripts, Kubernetes manifests, llm-d
InferencePools and the gateway's backends.yaml for every pool of a plan.

Library code is in ``tokenfleet.deploy``; imported inside the command so that
``--help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from tokenfleet.errors import TokenfleetError


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        key, sep, val = it.partition("=")
        if not sep or not key or not val:
            raise TokenfleetError(f"{flag} '{it}': expected KEY=VALUE, e.g. "
                                  f"{flag} NVIDIA=vllm/vllm-openai:v0.11.0")
        out[key.strip()] = val.strip()
    return out


def _selectors(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``gb200=label=value,label2=value2`` -> {"gb200": {"label": "value", ...}}."""
    out: dict[str, dict[str, str]] = {}
    for key, rest in _pairs(items, "--node-selector").items():
        labels = _pairs(rest.split(","), "--node-selector")
        out[key] = labels
    return out


def _write(base: Path, rel: str, text: str, executable: bool) -> None:
    """Atomic write (temp + rename) so a half-written manifest never lies around."""
    path = base / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if executable:
        tmp.chmod(0o755)
    os.replace(tmp, path)


def export_cmd(
    plan: Annotated[Path, typer.Argument(help="plan.json written by `tokenfleet plan`")],
    out: Annotated[Path, typer.Option(help="directory to write into")] = Path("deploy"),
    to: Annotated[str | None, typer.Option(
        help="formats, comma-separated: vllm, sglang, trtllm, k8s, llm-d, helm, backends "
             "(default: all)")] = None,
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace")] = "tokenfleet",
    image: Annotated[list[str] | None, typer.Option(
        help="container image per vendor or chip, e.g. NVIDIA=vllm/vllm-openai:v0.11.0 "
             "(repeatable)")] = None,
    resource: Annotated[list[str] | None, typer.Option(
        help="Kubernetes resource name per vendor or chip, e.g. Microsoft=microsoft.com/maia "
             "(repeatable)")] = None,
    node_selector: Annotated[list[str] | None, typer.Option(
        help="replace a vendor's or chip's node selector: gb200=label=value,label2=value2 "
             "(repeatable)")] = None,
    model_ref: Annotated[list[str] | None, typer.Option(
        help="weights to serve per catalog model, e.g. "
             "llama-3.1-8b=nvidia/Llama-3.1-8B-Instruct-FP4 (repeatable)")] = None,
    max_model_len: Annotated[int | None, typer.Option(
        min=1, help="cap the engines' context length, tokens (default: the model's)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the export summary as "
                                                          "JSON")] = False,
) -> None:
    """Write engine arguments, Kubernetes manifests and backends.yaml for a plan's pools.

    Per pool: launch arguments for vLLM, SGLang and TensorRT-LLM (where they run on the
    pool's chips), a Kubernetes Deployment (a LeaderWorkerSet when a replica spans
    nodes) and Service, an llm-d InferencePool; vLLM production-stack Helm values for
    the GPU pools; and the gateway's backends.yaml.

    Where plan.json names no engine, export picks one per vendor (vLLM on NVIDIA and
    AMD, vLLM-TPU on Google TPU, vLLM-Neuron on Trainium, an assumed vLLM build on Maia)
    and records why in export.json.

    Example: tokenfleet export plan.json --out deploy --to vllm,k8s,backends
    """
    from tokenfleet.deploy.bundle import ExportOptions, export_plan, parse_formats
    from tokenfleet.plan.schema import load_plan

    formats = parse_formats(to)
    p = load_plan(plan)
    opts = ExportOptions(namespace=namespace, images=_pairs(image, "--image"),
                         resources=_pairs(resource, "--resource"),
                         node_selectors=_selectors(node_selector),
                         model_refs=_pairs(model_ref, "--model-ref"),
                         max_model_len=max_model_len)
    result = export_plan(p, formats, opts)
    for f in result.files:
        _write(out, f.path, f.text, f.executable)
    if json_out:
        print(json.dumps({"out": str(out), **result.summary()}, indent=2))
        return
    from rich.table import Table

    from tokenfleet.cli.terminal import console

    t = Table(title=f"Exported {len(result.pools)} pools to {out}/")
    for col in ("pool", "engine", "replicas", "chips/pod", "nodes/replica", "resource"):
        t.add_column(col, overflow="fold")
    for pe in result.pools:
        tg = pe.target
        t.add_row(pe.pool, pe.engine.engine + ("" if pe.engine.chosen_by == "plan" else " *"),
                  str(tg.unit.replicas), str(tg.chips_per_pod), str(tg.nodes_per_replica),
                  tg.resource)
    c = console()
    c.print(t)
    c.print("* chosen by export (plan.json names no engine); reasons and notes in "
            f"{out}/export.json")
    c.print(f"{len(result.files)} files: engines/<engine>/<pool>.sh, k8s/<pool>.yaml, "
            f"llm-d/<pool>.inferencepool.yaml, backends.yaml, export.json")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
