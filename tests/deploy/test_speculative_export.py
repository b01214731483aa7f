"""`tokenfleet export` with speculative decoding: a pool the planner priced with the
model's MTP head or a draft model gets each engine's documented speculative flags
(vLLM --speculative-config, SGLang --speculative-*, TRT-LLM speculative_config), with k
and the draft's repository from the plan; a plain pool gets none."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml

from tokenfleet.deploy import engines
from tokenfleet.deploy.bundle import ExportOptions, PoolExport, export_plan
from tokenfleet.errors import TokenfleetError
from tokenfleet.plan.schema import Plan, PlanUnit

K8S_VERSION = "1.33.0"
LLAMA_1B_REPO = "meta-llama/Llama-3.2-1B"  # catalog: llama-3.2-1b's config source


def _plan_of(plan: Plan, units: list[PlanUnit]) -> Plan:
    return plan.model_copy(update={"units": units})


def _r1_mtp(plan: Plan) -> PlanUnit:
    base = next(u for u in plan.units if u.model == "deepseek-r1")  # h200, tp4 dp2 ep8
    return base.model_copy(update={"pool": base.pool + "/mtp", "speculative": "mtp"})


def _llama_draft(plan: Plan, spec: str = "draft:llama-3.2-1b") -> PlanUnit:
    base = next(u for u in plan.units if u.accelerator == "h100-sxm")  # tp4
    return base.model_copy(update={"pool": base.pool + "/draft-llama-3.2-1b",
                                   "model": "llama-3.3-70b", "speculative": spec})


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _spec_flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--speculative") or a == "--override-neuron-config"]


def _only_pool(plan: Plan, unit: PlanUnit, **kw: object) -> PoolExport:
    result = export_plan(_plan_of(plan, [unit]), **kw)  # type: ignore[arg-type]
    (pool,) = result.pools
    return pool


def test_an_mtp_pool_runs_the_models_mtp_head_on_every_engine(vendor_plan: Plan) -> None:
    pool = _only_pool(vendor_plan, _r1_mtp(vendor_plan))
    assert set(pool.launches) == {"vllm", "sglang", "trtllm"}
    for launch in pool.launches.values():
        engines.check_flags(launch.family, launch.argv)
    vllm = pool.launches["vllm"].argv
    assert json.loads(_flag(vllm, "--speculative-config")) == {
        "method": "mtp", "num_speculative_tokens": 1}
    sgl = pool.launches["sglang"].argv
    assert _flag(sgl, "--speculative-algorithm") == "EAGLE"  # SGLang's DeepSeek MTP path
    assert (_flag(sgl, "--speculative-num-steps"), _flag(sgl, "--speculative-eagle-topk"),
            _flag(sgl, "--speculative-num-draft-tokens")) == ("1", "1", "2")
    assert "--speculative-draft-model-path" not in sgl  # the head is in the checkpoint
    trt = pool.launches["trtllm"]
    assert trt.config_yaml is not None
    engines.check_config("trtllm", trt.config_yaml)
    assert trt.config_yaml["speculative_config"] == {"decoding_type": "MTP", "max_draft_len": 1}
    # the note states what was priced: k=1 at DeepSeek's 0.85 -> 1.85 tokens per step
    note = next(n for n in pool.notes if n.startswith("speculative decoding"))
    assert "k=1" in note and "0.85" in note and "1.85" in note


def test_a_draft_pool_names_the_drafts_repository_and_k(vendor_plan: Plan) -> None:
    pool = _only_pool(vendor_plan, _llama_draft(vendor_plan))
    for launch in pool.launches.values():
        engines.check_flags(launch.family, launch.argv)
    assert pool.launches["vllm"].argv[2] == "meta-llama/Llama-3.3-70B-Instruct"
    assert json.loads(_flag(pool.launches["vllm"].argv, "--speculative-config")) == {
        "method": "draft_model", "model": LLAMA_1B_REPO, "num_speculative_tokens": 4}
    sgl = pool.launches["sglang"].argv
    assert _flag(sgl, "--speculative-algorithm") == "STANDALONE"
    assert _flag(sgl, "--speculative-draft-model-path") == LLAMA_1B_REPO
    assert (_flag(sgl, "--speculative-num-steps"), _flag(sgl, "--speculative-eagle-topk"),
            _flag(sgl, "--speculative-num-draft-tokens")) == ("4", "1", "5")
    trt = pool.launches["trtllm"]
    assert trt.config_yaml is not None
    engines.check_config("trtllm", trt.config_yaml)
    assert trt.config_yaml["speculative_config"] == {
        "decoding_type": "Draft_Target", "max_draft_len": 4, "speculative_model": LLAMA_1B_REPO}
    note = next(n for n in pool.notes if n.startswith("speculative decoding"))
    assert "llama-3.2-1b" in note and "k=4" in note and "0.8" in note
    # each launch says where its engine reports the acceptance it achieves
    for launch in pool.launches.values():
        assert any("acceptance length" in n for n in launch.notes), launch.engine


def test_k_and_the_draft_path_follow_the_plan_and_model_refs(vendor_plan: Plan) -> None:
    unit = _llama_draft(vendor_plan, "draft:llama-3.2-1b:6:0.7")
    pool = _only_pool(vendor_plan, unit,
                      options=ExportOptions(model_refs={"llama-3.2-1b": "/models/l1b"}))
    conf = json.loads(_flag(pool.launches["vllm"].argv, "--speculative-config"))
    assert (conf["model"], conf["num_speculative_tokens"]) == ("/models/l1b", 6)
    assert _flag(pool.launches["sglang"].argv, "--speculative-num-draft-tokens") == "7"
    trt = pool.launches["trtllm"].config_yaml
    assert trt is not None and trt["speculative_config"]["speculative_model"] == "/models/l1b"


def test_a_plain_pool_gets_no_speculative_flag_or_note(vendor_plan: Plan) -> None:
    result = export_plan(vendor_plan)
    assert all(u.speculative is None for u in vendor_plan.units)
    for p in result.pools:
        assert not any("specul" in n.lower() for n in p.notes), p.pool
        for launch in p.launches.values():
            assert _spec_flags(launch.argv) == [], (p.pool, launch.engine)
            assert not any("specul" in n.lower() for n in launch.notes)
            if launch.config_yaml is not None:
                assert "speculative_config" not in launch.config_yaml


def test_fused_speculation_on_trainium_sets_neurons_fused_flag(vendor_plan: Plan) -> None:
    trn = next(u for u in vendor_plan.units if u.vendor == "AWS")
    unit = trn.model_copy(update={"model": "llama-3.3-70b", "pool": trn.pool + "/fused",
                                  "speculative": "fused:llama-3.2-1b:7"})
    pool = _only_pool(vendor_plan, unit)
    launch = pool.launches["vllm-neuron"]
    engines.check_flags("vllm", launch.argv)
    assert json.loads(_flag(launch.argv, "--speculative-config")) == {
        "model": LLAMA_1B_REPO, "num_speculative_tokens": 7}
    assert json.loads(_flag(launch.argv, "--override-neuron-config")) == {
        "enable_fused_speculation": True}
    # on a GPU the same setting runs as a plain draft model, and says so
    gpu = _only_pool(vendor_plan, _llama_draft(vendor_plan, "fused:llama-3.2-1b:7"))
    argv = gpu.launches["vllm"].argv
    assert "--override-neuron-config" not in argv
    assert json.loads(_flag(argv, "--speculative-config"))["method"] == "draft_model"
    assert any("fused speculation is AWS Neuron's" in n for n in gpu.launches["vllm"].notes)


def test_written_scripts_configs_and_manifests_carry_the_speculation(vendor_plan: Plan) -> None:
    plan = _plan_of(vendor_plan, [_r1_mtp(vendor_plan), _llama_draft(vendor_plan)])
    result = export_plan(plan)
    files = {f.path: f.text for f in result.files}
    for p in result.pools:
        assert "--speculative-config" in files[f"engines/vllm/{p.name}.sh"]
        assert "--speculative-algorithm" in files[f"engines/sglang/{p.name}.sh"]
        conf = yaml.safe_load(files[f"engines/trtllm/{p.name}.{engines.TRTLLM_CONFIG_NAME}"])
        engines.check_config("trtllm", conf)
        assert "speculative_config" in conf
        for doc in yaml.safe_load_all(files[f"k8s/{p.name}.yaml"]):
            if doc["kind"] in ("Deployment", "Service"):
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    helm = yaml.safe_load(files["helm/production-stack-values.yaml"])
    for spec in helm["servingEngineSpec"]["modelSpec"]:
        engines.check_flags("vllm", spec["vllmConfig"]["extraArgs"])
        assert "--speculative-config" in spec["vllmConfig"]["extraArgs"]
    summary = json.loads(files["export.json"])
    assert all(any(n.startswith("speculative decoding") for n in s["notes"])
               for s in summary["pools"])


def test_the_tables_refuse_an_undocumented_speculative_setting() -> None:
    # TRT-LLM's class literal is "Draft_Target"; the older "DraftTarget" is not in the table
    with pytest.raises(TokenfleetError, match="speculative_config.decoding_type"):
        engines.check_config("trtllm", {"speculative_config": {"decoding_type": "DraftTarget"}})
    with pytest.raises(TokenfleetError, match="speculative_config.num_nextn_predict_layers"):
        engines.check_config("trtllm", {"speculative_config": {
            "decoding_type": "MTP", "num_nextn_predict_layers": 1}})
    with pytest.raises(TokenfleetError, match="--speculative-model"):
        engines.check_flags("vllm", ["vllm", "serve", "m", "--speculative-model", "d"])


def test_an_unknown_draft_model_is_a_clear_error(vendor_plan: Plan) -> None:
    unit = _llama_draft(vendor_plan, "draft:no-such-draft")
    with pytest.raises(TokenfleetError, match="no-such-draft"):
        export_plan(_plan_of(vendor_plan, [unit]))
