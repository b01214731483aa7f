"""Values for the vLLM production-stack Helm chart (vllm-project/production-stack,
``helm/values.yaml``): one ``servingEngineSpec.modelSpec`` entry per pool that runs
vLLM on GPUs (NVIDIA, AMD). The chart's own keys carry what it knows (tensor parallel
size, max sequences, max model length, prefix caching, memory fraction); the rest of
the launch arguments go to ``vllmConfig.extraArgs``.

Keys read from vllm-project/production-stack@00c38d1a15cc61b9691da2b66898690dc8745f25:
helm/values.yaml.
"""

from __future__ import annotations

from typing import Any

from tokenfleet.deploy.engines import LaunchArgs
from tokenfleet.deploy.manifests import ACCEL_LABEL, PoolTarget

HELM_SOURCE = ("vllm-project/production-stack@00c38d1a15cc61b9691da2b66898690dc8745f25:"
               "helm/values.yaml")
# Flags the chart sets from its own keys (or that `vllm serve MODEL` takes positionally).
_CHART_FLAGS = {"--tensor-parallel-size": "tensorParallelSize", "--max-num-seqs": "maxNumSeqs",
                "--max-model-len": "maxModelLen", "--gpu-memory-utilization":
                "gpuMemoryUtilization"}
_DROPPED = {"--host", "--port", "--enable-prefix-caching"}


def _split_image(image: str) -> tuple[str, str]:
    repo, sep, tag = image.rpartition(":")
    return (repo, tag) if sep and "/" not in tag else (image, "latest")


def _to_number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def model_spec(t: PoolTarget, launch: LaunchArgs) -> dict[str, Any]:
    """One ``modelSpec`` entry: ``launch`` is the pool's vLLM launch."""
    argv = launch.argv[3:]  # after `vllm serve MODEL`
    config: dict[str, Any] = {"enablePrefixCaching": "--enable-prefix-caching" in argv}
    extra: list[str] = []
    i = 0
    while i < len(argv):
        flag = argv[i]
        has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        value = argv[i + 1] if has_value else None
        if flag in _CHART_FLAGS and value is not None:
            config[_CHART_FLAGS[flag]] = _to_number(value)
        elif flag not in _DROPPED:
            extra += [flag] + ([value] if value is not None else [])
        i += 2 if has_value else 1
    config["extraArgs"] = extra
    repo, tag = _split_image(t.image)
    return {
        "name": t.name, "enabled": True, "repository": repo, "tag": tag,
        "modelURL": launch.argv[2], "replicaCount": t.unit.replicas,
        "requestCPU": 8, "requestMemory": "64Gi",
        "requestGPU": t.chips_per_pod, "requestGPUType": t.resource,
        "runtimeClassName": "nvidia" if t.resource == "nvidia.com/gpu" else "",
        "shmSize": "20Gi", "vllmConfig": config,
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": k, "operator": "In", "values": [v]} for k, v in t.node_selector.items()]}],
    }


def helm_values(entries: list[tuple[PoolTarget, LaunchArgs]]) -> dict[str, Any]:
    return {"servingEngineSpec": {"modelSpec": [model_spec(t, a) for t, a in entries]}}


__all__ = ["ACCEL_LABEL", "HELM_SOURCE", "helm_values", "model_spec"]
