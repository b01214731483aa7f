"""``export_plan``: every deployable file for a plan, as (relative path, text) pairs.

Formats (``FORMATS``): ``vllm``, ``sglang``, ``trtllm`` (launch scripts per pool, where
the engine runs on the pool's chips), ``k8s`` (Deployment or LeaderWorkerSet + Service
per pool), ``llm-d`` (an InferencePool per pool) and ``backends`` (the gateway's
``backends.yaml`` pointing at the Services). ``export.json`` always comes along: per
pool, the engine chosen and why, every launch command, the notes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from tokenfleet.deploy import manifests as m
from tokenfleet.deploy.backends import PoolBackendsEntry, backends_yaml
from tokenfleet.deploy.engines import (
    TRTLLM_CONFIG_NAME,
    LaunchArgs,
    flag_tables,
    launch_args,
    settings_for,
    speculative_note,
)
from tokenfleet.deploy.platforms import EngineChoice, choose_engine, engines_for, load_platforms
from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.speculative import parse_speculation
from tokenfleet.plan.schema import Plan, PlanUnit

FORMATS = ("vllm", "sglang", "trtllm", "k8s", "llm-d", "helm", "backends")


@dataclass
class ExportOptions:
    """Overrides; keys of ``images``/``resources``/``node_selectors`` are a vendor
    (``NVIDIA``) or a catalog accelerator id (``gb200``), the accelerator winning."""

    namespace: str = "tokenfleet"
    images: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    node_selectors: dict[str, dict[str, str]] = field(default_factory=dict)
    model_refs: dict[str, str] = field(default_factory=dict)  # catalog model id -> repo/path
    max_model_len: int | None = None


@dataclass
class ExportedFile:
    path: str
    text: str
    executable: bool = False


@dataclass
class PoolExport:
    pool: str
    name: str
    engine: EngineChoice
    launches: dict[str, LaunchArgs]
    target: m.PoolTarget
    notes: list[str]


@dataclass
class ExportResult:
    files: list[ExportedFile]
    pools: list[PoolExport]

    def summary(self) -> dict[str, Any]:
        return {"pools": [_pool_summary(p) for p in self.pools],
                "files": [f.path for f in self.files],
                "engine_flag_sources": {k: {"version": t.version, "sources": t.sources}
                                        for k, t in flag_tables().items()}}


def _pool_summary(p: PoolExport) -> dict[str, Any]:
    t = p.target
    return {"pool": p.pool, "name": p.name, "engine": p.engine.engine,
            "engine_chosen_by": p.engine.chosen_by, "engine_reason": p.engine.reason,
            "image": t.image, "resource": t.resource, "chips_per_pod": t.chips_per_pod,
            "nodes_per_replica": t.nodes_per_replica, "replicas": t.unit.replicas,
            "node_selector": t.node_selector,
            "launch": {k: {"argv": v.argv, "notes": v.notes} for k, v in p.launches.items()},
            "notes": p.notes}


def parse_formats(text: str | None) -> list[str]:
    if not text:
        return list(FORMATS)
    wanted = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in wanted if f not in FORMATS]
    if bad:
        raise TokenfleetError(f"--to: unknown format(s) {', '.join(bad)}; allowed: "
                              f"{', '.join(FORMATS)}")
    return wanted


def hf_repo(source_url: str) -> str | None:
    """``org/name`` of a ``https://huggingface.co/org/name/blob/...`` config URL."""
    hit = re.match(r"https?://huggingface\.co/([^/]+/[^/]+)", source_url)
    return hit.group(1) if hit else None


def _override(d: dict[str, Any], unit: PlanUnit) -> Any:
    return d.get(unit.accelerator, d.get(unit.vendor))


def _target(unit: PlanUnit, opts: ExportOptions) -> m.PoolTarget:
    plat = load_platforms()
    vendor, chip = plat.vendor(unit.vendor), plat.chip(unit.accelerator)
    sel, notes = m.node_selector(unit, chip)
    custom_sel = _override(opts.node_selectors, unit)
    if custom_sel is not None:
        sel = dict(custom_sel)
    resource = _override(opts.resources, unit) or vendor.resource
    if vendor.assumption and resource == vendor.resource:
        notes.append(f"{unit.vendor}: {vendor.resource_source}")
    return m.PoolTarget(unit=unit, name=m.k8s_name(unit.pool), namespace=opts.namespace,
                        image=_override(opts.images, unit) or vendor.image, vendor=vendor,
                        chip=chip, resource=resource, node_selector=sel, notes=tuple(notes))


def _model_ref(model_id: str, opts: ExportOptions, catalog: Any) -> str:
    """Where the engine loads a catalog model from: ``--model-ref``, else the Hugging Face
    repository of its config source, else the catalog id."""
    return (opts.model_refs.get(model_id) or hf_repo(catalog.model(model_id).source)
            or model_id)


def _draft_ref(unit: PlanUnit, opts: ExportOptions, catalog: Any) -> str | None:
    """The repository of the draft model the pool's speculation names (None: no draft)."""
    if not unit.speculative:
        return None
    draft = parse_speculation(unit.speculative).draft_model
    return _model_ref(draft, opts, catalog) if draft else None


def _pool_export(unit: PlanUnit, opts: ExportOptions, catalog: Any, formats: list[str]
                 ) -> PoolExport:
    model = catalog.model(unit.model)
    ref = _model_ref(unit.model, opts, catalog)
    max_len = min(opts.max_model_len or model.max_context, model.max_context)
    s = settings_for(unit, ref, max_len, moe=model.num_experts > 0,
                     draft_ref=_draft_ref(unit, opts, catalog))
    choice = choose_engine(unit.vendor, unit.engine)
    launches = {choice.engine: launch_args(choice.engine, choice.family, s)}
    for eng in engines_for(unit.vendor):
        if eng in formats and eng not in launches:
            launches[eng] = launch_args(eng, eng, s)
    t = _target(unit, opts)
    notes = [choice.reason, *t.notes,
             *([speculative_note(s.spec)] if s.spec is not None else []),
             f"max model length {max_len} tokens (the model's context"
             + (", capped by --max-model-len)" if opts.max_model_len else "; the plan does not "
                "bound request length: lower it with --max-model-len to save KV memory)")]
    if t.nodes_per_replica > 1:
        notes.append(f"a replica needs {unit.chips_per_replica} chips > "
                     f"{t.chip.chips_per_node} per node ({t.chip.source}): one LeaderWorkerSet "
                     f"group of {t.nodes_per_replica} pods per replica over Ray")
    return PoolExport(unit.pool, t.name, choice, launches, t, notes)


def config_file_name(p: PoolExport) -> str:
    """The engine config file written next to the pool's launch script."""
    return f"{p.name}.{TRTLLM_CONFIG_NAME}"


def _script(p: PoolExport, launch: LaunchArgs) -> str:
    lines = ["#!/bin/sh", f"# pool {p.pool}: {p.target.unit.replicas} replica(s) of "
             f"{p.target.unit.chips_per_replica} x {p.target.unit.accelerator}; one replica:",
             *[f"# note: {n}" for n in launch.notes]]
    cmd = launch.shell()
    if launch.config_yaml is not None:
        # the config file lies next to this script, wherever it is run from
        lines.append(f'CONFIG="$(dirname "$0")/{config_file_name(p)}"')
        cmd = cmd.replace(f"--config {TRTLLM_CONFIG_NAME}", '--config "$CONFIG"')
    return "\n".join([*lines, f"exec {cmd}", ""])


def _dump_all(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def _k8s(p: PoolExport) -> str:
    launch = p.launches[p.engine.engine]
    work = (m.leader_worker_set(p.target, launch) if p.target.nodes_per_replica > 1
            else m.deployment(p.target, launch))
    config = m.engine_config_map(p.target, launch)
    return _dump_all([*([config] if config else []), work, m.service(p.target)])


def _backends(pools: list[PoolExport]) -> str:
    entries = []
    for p in pools:
        launch = p.launches[p.engine.engine]
        seqs = int(launch.argv[launch.argv.index("--max-num-seqs") + 1]) \
            if "--max-num-seqs" in launch.argv else None
        # One Service per pool: in flight at once up to twice the pool's batch slots
        # (one batch running, one waiting in the engines' queues).
        mif = None if seqs is None else 2 * seqs * p.target.unit.layout.dp \
            * p.target.unit.replicas
        entries.append(PoolBackendsEntry(p.pool, p.target.unit.model,
                                         (m.service_url(p.target),), mif))
    header = ("Written by `tokenfleet export`: the gateway's backends, one Kubernetes Service\n"
              "per pool of the plan. Run: tokenfleet serve --plan plan.json --backends "
              "backends.yaml")
    return backends_yaml(entries, header)


def _helm(pools: list[PoolExport]) -> ExportedFile:
    """production-stack values for the pools that run plain vLLM on GPUs (the chart
    requests GPUs and runs the vLLM image); other pools are listed in a comment."""
    from tokenfleet.deploy.helm import HELM_SOURCE, helm_values

    def fits(p: PoolExport) -> bool:
        return (p.engine.engine == "vllm" and "vllm" in p.launches
                and p.target.nodes_per_replica == 1)

    gpu = [(p.target, p.launches["vllm"]) for p in pools if fits(p)]
    skipped = [p.pool for p in pools if not fits(p)]
    head = (f"# vLLM production-stack Helm values (keys as in {HELM_SOURCE}).\n"
            "# helm install fleet vllm/vllm-stack -f production-stack-values.yaml\n"
            "# requestCPU / requestMemory are assumptions (8 CPUs, 64 GiB per pod): size them\n"
            + "".join(f"# not here (not single-node vLLM on GPUs; see k8s/): {s}\n"
                      for s in skipped))
    return ExportedFile("helm/production-stack-values.yaml",
                        head + yaml.safe_dump(helm_values(gpu), sort_keys=False))


def export_plan(plan: Plan, formats: list[str] | None = None,
                options: ExportOptions | None = None, catalog: Any = None) -> ExportResult:
    """Every file of ``formats`` (default: all) for ``plan``; nothing is written."""
    from tokenfleet.catalog.loader import load_catalog

    formats = formats or list(FORMATS)
    opts = options or ExportOptions()
    cat = catalog or load_catalog()
    pools = [_pool_export(u, opts, cat, formats) for u in plan.units]
    files: list[ExportedFile] = []
    for p in pools:
        for eng, launch in p.launches.items():
            fam_fmt = launch.family if eng == launch.family else eng
            if fam_fmt in formats or launch.family in formats:
                files.append(ExportedFile(f"engines/{eng}/{p.name}.sh", _script(p, launch),
                                          executable=True))
                if launch.config_yaml is not None:
                    files.append(ExportedFile(f"engines/{eng}/{config_file_name(p)}",
                                              yaml.safe_dump(launch.config_yaml, sort_keys=False)))
        if "k8s" in formats:
            files.append(ExportedFile(f"k8s/{p.name}.yaml", _k8s(p)))
        if "llm-d" in formats:
            files.append(ExportedFile(f"llm-d/{p.name}.inferencepool.yaml",
                                      _dump_all([m.inference_pool(p.target)])))
    if "helm" in formats:
        files.append(_helm(pools))
    if "backends" in formats:
        files.append(ExportedFile("backends.yaml", _backends(pools)))
    result = ExportResult(files, pools)
    files.append(ExportedFile("export.json", json.dumps(result.summary(), indent=2) + "\n"))
    return result
