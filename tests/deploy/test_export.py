"""`tokenfleet export`: manifests pass the Kubernetes OpenAPI schemas
(kubernetes-validate) and the InferencePool CRD; engine arguments use only documented
flags and carry the plan's numbers; backends.yaml loads in the gateway."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tokenfleet.deploy import engines
from tokenfleet.deploy.bundle import export_plan, parse_formats
from tokenfleet.deploy.manifests import k8s_name, tpu_topology
from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.schema import Plan
from tokenfleet.route.config import check_against_plan, load_backends

K8S_VERSION = "1.33.0"
POOL_SCHEMA = json.loads((Path(__file__).parent / "data/inferencepool-v1.schema.json")
                         .read_text())
RESOURCES = {"NVIDIA": "nvidia.com/gpu", "AMD": "amd.com/gpu", "Google": "google.com/tpu",
             "AWS": "aws.amazon.com/neuron", "Microsoft": "microsoft.com/maia"}


def _docs(result, prefix: str) -> list[dict]:
    return [d for f in result.files if f.path.startswith(prefix)
            for d in yaml.safe_load_all(f.text)]


def _validate_k8s(doc: dict) -> None:
    if doc["kind"] == "LeaderWorkerSet":
        # kubernetes-validate holds the core API only: check each group's pod template
        # as the Pod it becomes, and the LWS fields by hand.
        tmpl = doc["spec"]["leaderWorkerTemplate"]
        assert isinstance(tmpl["size"], int) and tmpl["size"] >= 2
        for role in ("leaderTemplate", "workerTemplate"):
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": doc["metadata"]["name"], **tmpl[role]["metadata"]},
                   "spec": tmpl[role]["spec"]}
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_manifest_passes_the_kubernetes_schemas(vendor_plan: Plan) -> None:
    result = export_plan(vendor_plan)
    docs = _docs(result, "k8s/")
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Service") == len(vendor_plan.units)
    for d in docs:
        _validate_k8s(d)
    for d in _docs(result, "llm-d/"):
        jsonschema.validate(d, POOL_SCHEMA)


def test_the_validators_catch_a_broken_manifest(vendor_plan: Plan) -> None:
    dep = next(d for d in _docs(export_plan(vendor_plan), "k8s/") if d["kind"] == "Deployment")
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_k8s(dep)
    pool = _docs(export_plan(vendor_plan), "llm-d/")[0]
    del pool["spec"]["targetPortNumber"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pool, POOL_SCHEMA)


def _containers(doc: dict) -> list[dict]:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    t = doc["spec"]["leaderWorkerTemplate"]
    return [*t["leaderTemplate"]["spec"]["containers"], *t["workerTemplate"]["spec"]["containers"]]


def test_each_vendor_requests_its_own_resource_for_every_chip(vendor_plan: Plan) -> None:
    result = export_plan(vendor_plan)
    by_name = {k8s_name(u.pool): u for u in vendor_plan.units}
    for d in _docs(result, "k8s/"):
        if d["kind"] == "Service":
            continue
        u = by_name[d["metadata"]["name"]]
        pods = d["spec"]["leaderWorkerTemplate"]["size"] if d["kind"] != "Deployment" else 1
        for c in _containers(d):
            res = c["resources"]["limits"]
            assert list(res) == [RESOURCES[u.vendor]]
            assert int(res[RESOURCES[u.vendor]]) * pods == u.chips_per_replica
        assert d["spec"]["replicas"] == u.replicas
    maia = next(p for p in result.pools if p.target.unit.vendor == "Microsoft")
    assert any("assumption" in n for n in maia.notes)


def test_replicas_wider_than_a_node_become_leader_worker_sets(vendor_plan: Plan) -> None:
    result = export_plan(vendor_plan)
    kinds = {d["metadata"]["name"]: d["kind"] for d in _docs(result, "k8s/")
             if d["kind"] != "Service"}
    assert kinds[k8s_name("chat/gb200/azure/us-central/fp4/x8")] == "LeaderWorkerSet"  # 4/node
    assert kinds[k8s_name("chat/tpu-v7/gcp/us-central/fp8/x16")] == "LeaderWorkerSet"
    assert kinds[k8s_name("chat/h100-sxm/aws/us-east/fp8/x4")] == "Deployment"
    tpu = next(p for p in result.pools if p.target.unit.accelerator == "tpu-v7")
    assert tpu.target.node_selector["cloud.google.com/gke-tpu-topology"] == "2x2x4"
    assert tpu_topology("tpu-v6e", 2) == ("2x2", "2 chips per replica is not a slice shape; "
                                          "the 2x2 slice (4 chips) is requested")


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_engine_arguments_carry_the_plans_layout_and_limits(vendor_plan: Plan) -> None:
    result = export_plan(vendor_plan)
    for p in result.pools:
        u = p.target.unit
        for launch in p.launches.values():
            engines.check_flags(launch.family, launch.argv)
            if launch.family == "vllm":
                a = launch.argv
                assert _flag(a, "--tensor-parallel-size") == str(u.layout.tp)
                assert _flag(a, "--pipeline-parallel-size") == str(u.layout.pp)
                assert _flag(a, "--served-model-name") == u.model
                seqs = int(_flag(a, "--max-num-seqs"))
                assert seqs * u.layout.dp >= u.capacity[0].concurrency
                assert _flag(a, "--kv-cache-dtype") == "fp8"
                assert ("--quantization" in a) == (u.precision == "fp8")
    moe = next(p for p in result.pools if p.target.unit.model == "deepseek-r1")
    assert _flag(moe.launches["vllm"].argv, "--data-parallel-size") == "2"
    assert "--enable-expert-parallel" in moe.launches["vllm"].argv
    assert _flag(moe.launches["sglang"].argv, "--ep-size") == "8"
    assert _flag(moe.launches["trtllm"].argv, "--ep_size") == "8"
    chosen = {p.target.unit.vendor: p.engine.engine for p in result.pools}
    assert chosen == {"NVIDIA": "vllm", "AMD": "vllm", "Google": "vllm-tpu",
                      "AWS": "vllm-neuron", "Microsoft": "vllm-maia"}
    assert all(p.engine.chosen_by == "export-default" for p in result.pools)


def test_an_undocumented_flag_is_refused() -> None:
    with pytest.raises(TokenfleetError, match="--num-gpus"):
        engines.check_flags("vllm", ["vllm", "serve", "m", "--num-gpus", "4"])


def test_flag_table_names_a_source_for_every_flag() -> None:
    for name, table in engines.flag_tables().items():
        assert table.version, name
        for flag, key in table.flags.items():
            assert key in table.sources, (name, flag)
            assert "@" in table.sources[key], (name, flag)  # repo@commit:path


def test_exports_engine_limits_match_the_performance_model(vendor_plan: Plan) -> None:
    """The memory fraction and token budget the engines are told are the ones the
    performance model priced the pool with (perf.engines)."""
    from tokenfleet.perf.engines import engine_profile

    checked = 0
    for p in export_plan(vendor_plan).pools:
        prof = engine_profile(p.target.unit.engine)
        launch = p.launches.get("vllm")
        if launch is None:
            continue
        a = launch.argv
        assert _flag(a, "--gpu-memory-utilization") == str(engine_profile("vllm").memory_fraction)
        assert int(_flag(a, "--max-num-batched-tokens")) == prof.max_num_batched_tokens
        assert int(_flag(a, "--max-num-seqs")) <= prof.max_num_seqs
        checked += 1
    assert checked


def test_backends_yaml_loads_in_the_gateway(vendor_plan: Plan, tmp_path: Path) -> None:
    f = next(f for f in export_plan(vendor_plan).files if f.path == "backends.yaml")
    (tmp_path / "backends.yaml").write_text(f.text)
    b = load_backends(tmp_path / "backends.yaml")
    assert set(b.pools) == {u.pool for u in vendor_plan.units}
    assert check_against_plan(b, vendor_plan) == []


def test_formats_pick_files(vendor_plan: Plan) -> None:
    paths = [f.path for f in export_plan(vendor_plan, parse_formats("k8s,backends")).files]
    assert {p.split("/")[0] for p in paths} == {"k8s", "backends.yaml", "export.json"}
    with pytest.raises(TokenfleetError, match="allowed: vllm"):
        parse_formats("vllm,helmfile")


def test_engine_named_in_the_plan_wins(vendor_plan: Plan) -> None:
    u = vendor_plan.units[0].model_copy(update={"engine": "sglang"})
    plan = vendor_plan.model_copy(update={"units": [u]})
    p = export_plan(plan).pools[0]
    assert p.engine.engine == "sglang" and p.engine.chosen_by == "plan"
    dep = yaml.safe_load_all(next(f.text for f in export_plan(plan).files
                                  if f.path.startswith("k8s/")))
    cmd = next(iter(dep))["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["python3", "-m", "sglang.launch_server"]


# Keys of a modelSpec entry and of its vllmConfig in the chart's values.yaml
# (vllm-project/production-stack@00c38d1a15cc61b9691da2b66898690dc8745f25:helm/values.yaml).
CHART_MODELSPEC_KEYS = {
    "name", "enabled", "annotations", "podAnnotations", "serviceAccountName",
    "priorityClassName", "runtimeClassName", "repository", "tag", "imagePullSecret",
    "modelURL", "chatTemplate", "replicaCount", "resources", "requestCPU", "requestMemory",
    "requestGPU", "requestGPUType", "limitCPU", "limitMemory", "pvcStorage", "pvcAccessMode",
    "storageClass", "extraVolumes", "extraVolumeMounts", "initContainer", "vllmConfig",
    "lmcacheConfig", "hf_token", "envFromSecret", "env", "affinity", "nodeSelectorTerms",
    "nodeName", "tolerations", "tolerationsPolicy", "shmSize", "enableLoRA", "keda", "raySpec"}
CHART_VLLMCONFIG_KEYS = {"v0", "enablePrefixCaching", "enableChunkedPrefill", "maxModelLen",
                         "dtype", "tensorParallelSize", "maxNumSeqs", "maxLoras",
                         "gpuMemoryUtilization", "runner", "convert", "extraArgs"}


def test_helm_values_use_the_charts_keys_and_the_plans_numbers(vendor_plan: Plan) -> None:
    f = next(f for f in export_plan(vendor_plan).files
             if f.path == "helm/production-stack-values.yaml")
    specs = yaml.safe_load(f.text)["servingEngineSpec"]["modelSpec"]
    by_name = {k8s_name(u.pool): u for u in vendor_plan.units}
    # single-node vLLM pools on NVIDIA and AMD only
    assert {by_name[s["name"]].vendor for s in specs} == {"NVIDIA", "AMD"}
    assert "chat/gb200/azure/us-central/fp4/x8" in f.text.split("servingEngineSpec")[0]
    for s in specs:
        assert set(s) <= CHART_MODELSPEC_KEYS
        assert set(s["vllmConfig"]) <= CHART_VLLMCONFIG_KEYS
        u = by_name[s["name"]]
        assert s["replicaCount"] == u.replicas and s["requestGPU"] == u.chips_per_replica
        assert s["vllmConfig"]["tensorParallelSize"] == u.layout.tp
        engines.check_flags("vllm", s["vllmConfig"]["extraArgs"])


def test_trtllm_config_keys_are_documented_and_carry_the_plan(vendor_plan: Plan) -> None:
    """The --config YAML of every TRT-LLM launch uses only the LLM-API fields in the
    checked-in table, sets the KV dtype the plan priced, and the launch script points at
    the file export writes next to it."""
    result = export_plan(vendor_plan, ["trtllm"])
    written = {f.path: f.text for f in result.files}
    seen = 0
    for p in result.pools:
        launch = p.launches.get("trtllm")
        if launch is None:
            continue
        seen += 1
        assert launch.config_yaml is not None
        engines.check_config("trtllm", launch.config_yaml)
        kv = launch.config_yaml["kv_cache_config"]
        assert isinstance(kv, dict)
        assert kv["dtype"] == engines.TRTLLM_KV_DTYPE.get(p.target.unit.kv_precision, "auto")
        assert ("enable_attention_dp" in launch.config_yaml) == (p.target.unit.layout.dp > 1)
        script = written[f"engines/trtllm/{p.name}.sh"]
        conf = f"engines/trtllm/{p.name}.{engines.TRTLLM_CONFIG_NAME}"
        assert conf in written
        assert f'CONFIG="$(dirname "$0")/{p.name}.{engines.TRTLLM_CONFIG_NAME}"' in script
        assert '--config "$CONFIG"' in script
    assert seen >= 1


def test_an_undocumented_trtllm_config_key_or_value_is_refused() -> None:
    with pytest.raises(TokenfleetError, match="kv_cache_config.enable_reuse"):
        engines.check_config("trtllm", {"kv_cache_config": {"enable_reuse": True}})
    with pytest.raises(TokenfleetError, match="kv_cache_config.dtype='int4'"):
        engines.check_config("trtllm", {"kv_cache_config": {"dtype": "int4"}})
    engines.check_config("trtllm", {"kv_cache_config": {"dtype": "fp8"},
                                    "enable_attention_dp": True})


def test_config_key_table_names_a_source_for_every_key() -> None:
    for name, table in engines.flag_tables().items():
        for key, src in table.config_keys.items():
            assert src in table.sources and "@" in table.sources[src], (name, key)
        assert set(table.config_values) <= set(table.config_keys), name


def test_a_trtllm_pool_mounts_its_config_from_a_configmap(vendor_plan: Plan) -> None:
    """A pool the plan runs on TRT-LLM: its Deployment (or LeaderWorkerSet) reads --config
    from a ConfigMap export writes next to it, and every document passes the schemas."""
    nvidia = [u.model_copy(update={"engine": "trtllm"}) for u in vendor_plan.units
              if u.vendor == "NVIDIA"]
    plan = vendor_plan.model_copy(update={"units": nvidia})
    result = export_plan(plan, ["k8s"])
    assert nvidia and all(p.engine.engine == "trtllm" for p in result.pools)
    for f in result.files:
        if not f.path.startswith("k8s/"):
            continue
        docs = list(yaml.safe_load_all(f.text))
        for d in docs:
            _validate_k8s(d)
        cm, work = docs[0], docs[1]
        assert cm["kind"] == "ConfigMap"
        conf = yaml.safe_load(cm["data"][engines.TRTLLM_CONFIG_NAME])
        engines.check_config("trtllm", conf)
        spec = (work["spec"]["template"]["spec"] if work["kind"] == "Deployment" else
                work["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"])
        vol = next(v for v in spec["volumes"] if "configMap" in v)
        assert vol["configMap"]["name"] == cm["metadata"]["name"]
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == vol["name"])
        cmd = " ".join(spec["containers"][0]["command"])
        assert f"--config {mount['mountPath']}/{engines.TRTLLM_CONFIG_NAME}" in cmd


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_a_disaggregated_pairs_halves_get_their_engines_pd_flags(vendor_plan: Plan,
                                                                 engine: str) -> None:
    base = vendor_plan.units[0]
    halves = [base.model_copy(update={"pool": f"{base.pool}/{role}", "role": role,
                                      "pair": "p1", "engine": engine})
              for role in ("prefill", "decode")]
    plan = vendor_plan.model_copy(update={"units": halves})
    pools = {p.pool.rsplit("/", 1)[1]: p for p in export_plan(plan).pools}
    assert set(pools) == {"prefill", "decode"}
    for role, p in pools.items():
        launch = p.launches[p.engine.engine]
        argv, notes = launch.argv, " ".join(launch.notes)
        assert f"{role} half of a disaggregated pair" in notes
        if engine == "vllm":
            cfg = json.loads(argv[argv.index("--kv-transfer-config") + 1])
            assert cfg["kv_connector"] == "NixlConnector"
            assert cfg["kv_role"] == {"prefill": "kv_producer", "decode": "kv_consumer"}[role]
        elif engine == "sglang":
            assert argv[argv.index("--disaggregation-mode") + 1] == role
    aggregated = export_plan(vendor_plan.model_copy(update={"units": [base]})).pools[0]
    assert not any("disaggregat" in a or "kv-transfer" in a
                   for launch in aggregated.launches.values() for a in launch.argv)
