"""Kubernetes objects for one pool: a Deployment (or, when a replica spans nodes, a
LeaderWorkerSet) and a Service, plus a Gateway API Inference Extension ``InferencePool``
for llm-d. Plain dicts, ready for ``yaml.safe_dump``; tests validate them against the
Kubernetes OpenAPI schemas (``kubernetes-validate``) and the InferencePool CRD."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

from tokenfleet.deploy.engines import SERVE_PORT, TRTLLM_CONFIG_NAME, LaunchArgs
from tokenfleet.deploy.platforms import ChipPlatform, VendorPlatform
from tokenfleet.plan.schema import PlanUnit

APP_LABEL = "tokenfleet-pool"
ACCEL_LABEL = "tokenfleet.io/accelerator"
POOL_LABEL = "tokenfleet.io/pool"
# The InferencePool CRD read for this: kubernetes-sigs/gateway-api-inference-extension
# @712f8003e7fea17cfa5638c8d4fd1b1167be779b:config/crd/bases/
# inference.networking.k8s.io_inferencepools.yaml (spec: selector, targetPortNumber,
# extensionRef).
INFERENCE_POOL_API = "inference.networking.k8s.io/v1"
LWS_API = "leaderworkerset.x-k8s.io/v1"

_TPU_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
           256: "16x16"}
_TPU_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
           256: "4x8x8", 512: "8x8x8"}


def k8s_name(pool: str) -> str:
    """A DNS-1123 label (<= 63 chars) for a pool id such as ``small/gb200/azure/us/fp4/x1``;
    long ids keep a hash so that two pools never share a name."""
    s = re.sub(r"[^a-z0-9-]+", "-", pool.lower()).strip("-")
    if len(s) <= 63:
        return s
    h = hashlib.sha1(pool.encode()).hexdigest()[:8]
    return s[:54].rstrip("-") + "-" + h


@dataclass(frozen=True)
class PoolTarget:
    """Where and how one pool runs."""

    unit: PlanUnit
    name: str
    namespace: str
    image: str
    vendor: VendorPlatform
    chip: ChipPlatform
    resource: str
    node_selector: dict[str, str]
    notes: tuple[str, ...] = ()

    @property
    def nodes_per_replica(self) -> int:
        return math.ceil(self.unit.chips_per_replica / self.chip.chips_per_node)

    @property
    def chips_per_pod(self) -> int:
        return min(self.unit.chips_per_replica, self.chip.chips_per_node)


def tpu_topology(accelerator: str, chips: int) -> tuple[str | None, str | None]:
    """GKE's ``gke-tpu-topology`` for a slice of ``chips`` (2-D for v5e/v6e, 3-D for
    v5p/v7), the smallest slice that holds them, and a note when it is bigger."""
    shapes = _TPU_3D if accelerator in ("tpu-v5p", "tpu-v7") else _TPU_2D
    size = next((n for n in sorted(shapes) if n >= chips), None)
    if size is None:
        return None, f"no TPU slice shape of {chips} chips in export's table"
    note = None if size == chips else (f"{chips} chips per replica is not a slice shape; "
                                       f"the {shapes[size]} slice ({size} chips) is requested")
    return shapes[size], note


def node_selector(unit: PlanUnit, chip: ChipPlatform) -> tuple[dict[str, str], list[str]]:
    sel = {ACCEL_LABEL: unit.accelerator}
    notes: list[str] = []
    if chip.gke_accelerator:
        sel["cloud.google.com/gke-tpu-accelerator"] = chip.gke_accelerator
        topo, note = tpu_topology(unit.accelerator, unit.chips_per_replica)
        if topo:
            sel["cloud.google.com/gke-tpu-topology"] = topo
        if note:
            notes.append(note)
    if chip.instance_type:
        sel["node.kubernetes.io/instance-type"] = chip.instance_type
    return sel, notes


def _labels(t: PoolTarget) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP_LABEL, POOL_LABEL: t.name,
            "tokenfleet.io/tier": k8s_name(t.unit.tier)[:63],
            "tokenfleet.io/vendor": k8s_name(t.unit.vendor)[:63]}


def _selector(t: PoolTarget) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP_LABEL, POOL_LABEL: t.name}


def _serving_selector(t: PoolTarget) -> dict[str, str]:
    """Pods that serve HTTP: all of a Deployment's, a LeaderWorkerSet's leaders."""
    sel = _selector(t)
    if t.nodes_per_replica > 1:
        sel["leaderworkerset.sigs.k8s.io/worker-index"] = "0"
    return sel


def _annotations(t: PoolTarget) -> dict[str, str]:
    u = t.unit
    return {"tokenfleet.io/pool-id": u.pool, "tokenfleet.io/model": u.model,
            "tokenfleet.io/precision": f"{u.precision} (KV {u.kv_precision})",
            "tokenfleet.io/usd-per-hour": f"{u.usd_per_hour:.2f}"}


# where a pod finds its engine's config file (TRT-LLM's --config), from a ConfigMap
ENGINE_CONFIG_DIR = "/etc/tokenfleet"
ENGINE_CONFIG_VOLUME = "engine-config"


def config_map_name(t: PoolTarget) -> str:
    return t.name[:56] + "-config"


def engine_config_map(t: PoolTarget, launch: LaunchArgs) -> dict[str, Any] | None:
    """The engine's config file as a ConfigMap, or None when its launch has none."""
    import yaml

    if launch.config_yaml is None:
        return None
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": config_map_name(t), "namespace": t.namespace,
                         "labels": _labels(t), "annotations": _annotations(t)},
            "data": {TRTLLM_CONFIG_NAME: yaml.safe_dump(launch.config_yaml, sort_keys=False)}}


def pod_argv(launch: LaunchArgs) -> list[str]:
    """The launch's argv inside a pod: a --config file is read from the mounted ConfigMap."""
    if launch.config_yaml is None or "--config" not in launch.argv:
        return list(launch.argv)
    a = list(launch.argv)
    a[a.index("--config") + 1] = f"{ENGINE_CONFIG_DIR}/{TRTLLM_CONFIG_NAME}"
    return a


def _container(t: PoolTarget, command: list[str], probe: bool,
               config: bool = False) -> dict[str, Any]:
    chips = str(t.chips_per_pod)
    c: dict[str, Any] = {
        "name": "engine", "image": t.image, "command": command,
        "ports": [{"name": "http", "containerPort": SERVE_PORT}],
        "resources": {"limits": {t.resource: chips}, "requests": {t.resource: chips}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if config:
        c["volumeMounts"].append({"name": ENGINE_CONFIG_VOLUME, "mountPath": ENGINE_CONFIG_DIR,
                                  "readOnly": True})
    if probe:
        # vLLM and SGLang serve /health; loading weights takes minutes, hence the delay.
        c["readinessProbe"] = {"httpGet": {"path": "/health", "port": SERVE_PORT},
                               "initialDelaySeconds": 60, "periodSeconds": 10}
    return c


def _pod_spec(t: PoolTarget, command: list[str], probe: bool = True,
              config: bool = False) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if config:
        volumes.append({"name": ENGINE_CONFIG_VOLUME,
                        "configMap": {"name": config_map_name(t)}})
    return {"nodeSelector": dict(t.node_selector),
            "containers": [_container(t, command, probe, config)],
            "volumes": volumes}


def deployment(t: PoolTarget, launch: LaunchArgs) -> dict[str, Any]:
    """One pod per replica, all of its chips on one node."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": t.name, "namespace": t.namespace, "labels": _labels(t),
                     "annotations": _annotations(t)},
        "spec": {
            "replicas": t.unit.replicas,
            "selector": {"matchLabels": _selector(t)},
            "template": {"metadata": {"labels": _labels(t)},
                         "spec": _pod_spec(t, pod_argv(launch),
                                           config=launch.config_yaml is not None)},
        },
    }


def leader_worker_set(t: PoolTarget, launch: LaunchArgs) -> dict[str, Any]:
    """A replica that spans ``nodes_per_replica`` nodes: one leader runs the engine's API
    server over a Ray cluster that the workers join (vLLM's multi-node recipe)."""
    import shlex

    serve = " ".join(shlex.quote(a) for a in pod_argv(launch))
    config = launch.config_yaml is not None
    leader = ["sh", "-c", f"ray start --head --port=6379 && {serve}"]
    worker = ["sh", "-c", "ray start --address=$(LWS_LEADER_ADDRESS):6379 --block"]
    return {
        "apiVersion": LWS_API, "kind": "LeaderWorkerSet",
        "metadata": {"name": t.name, "namespace": t.namespace, "labels": _labels(t),
                     "annotations": _annotations(t)},
        "spec": {
            "replicas": t.unit.replicas,
            "leaderWorkerTemplate": {
                "size": t.nodes_per_replica,
                "leaderTemplate": {"metadata": {"labels": _labels(t)},
                                   "spec": _pod_spec(t, leader, config=config)},
                "workerTemplate": {"metadata": {"labels": _labels(t)},
                                   "spec": _pod_spec(t, worker, probe=False)},
            },
        },
    }


def service(t: PoolTarget) -> dict[str, Any]:
    """A ClusterIP in front of the pool's API servers (a LeaderWorkerSet's leaders only:
    LWS labels each group's leader with worker index 0)."""
    sel = _serving_selector(t)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": t.name, "namespace": t.namespace, "labels": _labels(t),
                     "annotations": _annotations(t)},
        "spec": {"selector": sel,
                 "ports": [{"name": "http", "port": SERVE_PORT, "targetPort": SERVE_PORT}]},
    }


def inference_pool(t: PoolTarget) -> dict[str, Any]:
    """llm-d / Gateway API Inference Extension: the pool's pods behind an endpoint picker
    (deploy the picker with llm-d's or the extension's chart under ``<name>-epp``)."""
    return {
        "apiVersion": INFERENCE_POOL_API, "kind": "InferencePool",
        "metadata": {"name": t.name, "namespace": t.namespace, "labels": _labels(t),
                     "annotations": _annotations(t)},
        "spec": {"selector": _serving_selector(t), "targetPortNumber": SERVE_PORT,
                 "extensionRef": {"name": (t.name[:59] + "-epp")}},
    }


def service_url(t: PoolTarget) -> str:
    return f"http://{t.name}.{t.namespace}.svc.cluster.local:{SERVE_PORT}"
