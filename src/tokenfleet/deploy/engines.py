"""Launch arguments of one pool for vLLM (and its TPU / Neuron builds), SGLang and
TensorRT-LLM's ``trtllm-serve``, checked against the documented flags in
``data/engine_flags.yaml``.

The numbers come from the plan, so the engine runs the unit the planner priced:
parallel sizes from the pool's layout, weight and KV precision, a batch cap at the
concurrency the planner sized the pool for (more sequences would break the TPOT SLO;
they wait in the engine's queue instead), the token budget and memory fraction the
performance model assumed, and the speculative decoding (a draft model or the model's
MTP head, k tokens proposed per step) the planner priced for the pool.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict

from tokenfleet.errors import TokenfleetError
from tokenfleet.perf.engines import engine_profile
from tokenfleet.perf.speculative import expected_tokens_per_step, parse_speculation
from tokenfleet.plan.schema import PlanUnit

SERVE_PORT = 8000
# the --config file trtllm-serve is given; `export` writes it next to the launch script
TRTLLM_CONFIG_NAME = "extra-llm-api-config.yaml"


class FlagTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: list[str]
    positional: str | None
    sources: dict[str, str]
    version: str
    flags: dict[str, str]
    # keys of a config file the engine reads (TRT-LLM's --config YAML), dotted for
    # nested sections, and the values a key accepts where the engine lists them
    config_keys: dict[str, str] = {}
    config_values: dict[str, list[str]] = {}

    def source_of(self, flag: str) -> str:
        return self.sources[self.flags[flag]]


@lru_cache(maxsize=1)
def flag_tables() -> dict[str, FlagTable]:
    text = resources.files("tokenfleet.deploy").joinpath("data/engine_flags.yaml").read_text()
    return {k: FlagTable.model_validate(v) for k, v in yaml.safe_load(text).items()}


def check_flags(family: str, argv: list[str]) -> None:
    """Raise when ``argv`` holds a flag the engine's documented table lacks."""
    table = flag_tables()[family]
    unknown = [a for a in argv if a.startswith("--") and a not in table.flags]
    if unknown:
        raise TokenfleetError(f"{family}: flag(s) {', '.join(unknown)} are not in the "
                              f"documented table deploy/data/engine_flags.yaml")


def _dotted(config: dict[str, object], prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the leaves of a nested config."""
    out: dict[str, object] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_config(family: str, config: dict[str, object]) -> None:
    """Raise when ``config`` (an engine's config file) holds a key the documented table
    lacks, or a value outside the values the table lists for its key."""
    table = flag_tables()[family]
    leaves = _dotted(config)
    unknown = sorted(k for k in leaves if k not in table.config_keys)
    if unknown:
        raise TokenfleetError(f"{family}: config key(s) {', '.join(unknown)} are not in the "
                              f"documented table deploy/data/engine_flags.yaml")
    for key, allowed in table.config_values.items():
        if key in leaves and str(leaves[key]) not in allowed:
            raise TokenfleetError(f"{family}: config {key}={leaves[key]!r} is not one of "
                                  f"{', '.join(allowed)} (deploy/data/engine_flags.yaml)")


# The plan's KV-cache precision -> TRT-LLM's kv_cache_config.dtype ("auto" reads the
# checkpoint's own precision, which is what bf16/fp16 KV means for an unquantized model).
TRTLLM_KV_DTYPE = {"fp8": "fp8", "fp4": "nvfp4"}


@dataclass(frozen=True)
class SpecSettings:
    """The speculative decoding a pool runs (``PlanUnit.speculative``, parsed): ``kind``
    mtp (the checkpoint's MTP layers), draft (a smaller model run by the engine) or fused
    (the same draft compiled into the target's step: AWS Neuron), ``k`` proposed tokens
    per step, each accepted at ``acceptance`` as the planner assumed."""

    kind: str
    k: int
    acceptance: float
    draft_model: str | None = None  # catalog id
    draft_ref: str | None = None  # Hugging Face repository or local path of the draft

    @property
    def tokens_per_step(self) -> float:
        return expected_tokens_per_step(self.k, self.acceptance)


@dataclass(frozen=True)
class EngineSettings:
    """What every engine is told about one pool (per replica, per data-parallel rank)."""

    model_ref: str  # Hugging Face repository or local path of the weights
    served_name: str  # the name clients (the gateway) send
    tp: int
    pp: int
    dp: int
    ep: int
    precision: str
    kv_precision: str
    max_seqs_per_rank: int
    max_batched_tokens: int
    max_model_len: int
    port: int = SERVE_PORT
    moe: bool = False
    role: str = "both"  # both | prefill | decode (a disaggregated pair's half)
    spec: SpecSettings | None = None  # speculative decoding; None: plain decoding


def max_seqs_per_rank(unit: PlanUnit) -> int:
    """Sequences one data-parallel rank may run: the most the planner put on a replica
    in any bucket (its SLO operating point), rounded up to a multiple of 8."""
    planned = max((c.concurrency for c in unit.capacity), default=0.0)
    per_rank = math.ceil(planned / max(unit.layout.dp, 1))
    # never above the cap the performance model assumed for the pool's engine
    cap = engine_profile(unit.engine).max_num_seqs
    return int(min(cap, max(8, 8 * math.ceil(per_rank / 8))))


def spec_settings(unit: PlanUnit, draft_ref: str | None = None) -> SpecSettings | None:
    """``unit.speculative`` parsed; a draft model is named by ``draft_ref`` (its
    repository) where given, else by its catalog id."""
    if not unit.speculative:
        return None
    s = parse_speculation(unit.speculative)
    ref = (draft_ref or s.draft_model) if s.draft_model else None
    return SpecSettings(s.kind, s.k, s.acceptance, s.draft_model, ref)


def settings_for(unit: PlanUnit, model_ref: str, max_model_len: int, moe: bool,
                 draft_ref: str | None = None) -> EngineSettings:
    lay = unit.layout
    return EngineSettings(
        model_ref=model_ref, served_name=unit.model, tp=lay.tp, pp=lay.pp,
        dp=lay.dp, ep=lay.ep, precision=unit.precision,
        kv_precision=unit.kv_precision, max_seqs_per_rank=max_seqs_per_rank(unit),
        max_batched_tokens=engine_profile(unit.engine).max_num_batched_tokens,
        max_model_len=max_model_len, moe=moe, role=unit.role,
        spec=spec_settings(unit, draft_ref))


@dataclass
class LaunchArgs:
    engine: str
    family: str
    argv: list[str]
    config_yaml: dict[str, object] | None = None  # TRT-LLM's --config file
    notes: list[str] = field(default_factory=list)

    def shell(self) -> str:
        """One shell command line, arguments quoted where needed."""
        import shlex

        return " ".join(shlex.quote(a) for a in self.argv)


def _weights_note(s: EngineSettings, engine: str) -> str | None:
    if s.precision == "fp4":
        return (f"fp4: serve an FP4 checkpoint of {s.served_name} (NVFP4 from NVIDIA ModelOpt "
                f"on Blackwell, MXFP4 on AMD CDNA4/gpt-oss); {engine} reads the scheme from "
                f"the checkpoint's quantization_config, so no --quantization flag is set")
    if s.precision == "int8":
        return (f"int8: serve a weight-only INT8 (W8A16) checkpoint; {engine} reads the "
                f"scheme from its quantization_config")
    return None


def vllm_args(s: EngineSettings, engine: str = "vllm") -> LaunchArgs:
    table = flag_tables()["vllm"]
    a = [*table.command, s.model_ref, "--host", "0.0.0.0", "--port", str(s.port),
         "--served-model-name", s.served_name,
         "--tensor-parallel-size", str(s.tp), "--pipeline-parallel-size", str(s.pp)]
    notes: list[str] = []
    if s.dp > 1:
        a += ["--data-parallel-size", str(s.dp)]
    if s.moe and s.ep > 1:
        a += ["--enable-expert-parallel"]
        if s.ep != s.tp * s.dp:
            notes.append(f"vLLM's expert-parallel group is tp x dp = {s.tp * s.dp}; the "
                         f"plan's layout assumed ep={s.ep}")
    if s.precision == "fp8":
        a += ["--quantization", "fp8"]
    elif s.precision == "bf16":
        a += ["--dtype", "bfloat16"]
    if s.kv_precision == "fp8":
        a += ["--kv-cache-dtype", "fp8"]
    a += ["--max-num-seqs", str(s.max_seqs_per_rank),
          "--max-num-batched-tokens", str(s.max_batched_tokens),
          "--max-model-len", str(s.max_model_len), "--enable-prefix-caching",
          "--gpu-memory-utilization", str(engine_profile("vllm").memory_fraction)]
    if s.role != "both":  # one half of a disaggregated pair: KV handed over by NIXL
        a += ["--kv-transfer-config", json.dumps(
            {"kv_connector": "NixlConnector",
             "kv_role": "kv_producer" if s.role == "prefill" else "kv_consumer",
             "kv_load_failure_policy": "fail"}, separators=(",", ":"))]
        notes.append(_pd_note(s.role, "vLLM (NixlConnector; set VLLM_NIXL_SIDE_CHANNEL_HOST "
                                      "and _PORT per instance)"))
    if s.spec is not None:
        a += _vllm_spec_args(s.spec, s.pp, engine, notes)
    if (n := _weights_note(s, "vLLM")) is not None:
        notes.append(n)
    check_flags("vllm", a)
    return LaunchArgs(engine, "vllm", a, notes=notes)


def _compact_json(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _vllm_spec_args(sp: SpecSettings, pp: int, engine: str, notes: list[str]) -> list[str]:
    """``--speculative-config`` (SpeculativeConfig fields: method, model,
    num_speculative_tokens) for the pool's speculation, and on Neuron the fused flag."""
    if pp > 1:
        notes.append("speculative decoding: vLLM's docs list pipeline parallelism as not "
                     "composable with speculative decoding (vllm<=0.15.0); this pool has "
                     f"pp={pp}")
    if sp.kind == "mtp":
        # the checkpoint's own MTP layers (DeepSeek-V3/R1: DeepSeekMTPModel)
        notes.append("vLLM releases before the unified method name take "
                     '"method": "deepseek_mtp" for DeepSeek-V3/R1'
                     + ("; with k > 1 vLLM reruns the checkpoint's MTP layer (DeepSeek-R1 "
                        "ships one) and warns that acceptance may drop" if sp.k > 1 else ""))
        return ["--speculative-config",
                _compact_json({"method": "mtp", "num_speculative_tokens": sp.k})]
    if sp.kind == "fused" and engine == "vllm-neuron":
        # NxD Inference fuses the draft into the target's compiled step; the method is
        # detected from the draft model
        notes.append("fused speculation: NxD Inference's vLLM integration as AWS documents "
                     "it (Neuron vLLM fork, VLLM_USE_V1=0, Neuron SDK 2.26 DLC); the V1 "
                     "vllm-neuron plugin documents EAGLE drafts only, so pin that image")
        return ["--speculative-config",
                _compact_json({"model": sp.draft_ref, "num_speculative_tokens": sp.k}),
                "--override-neuron-config", _compact_json({"enable_fused_speculation": True})]
    if sp.kind == "fused":
        notes.append(f"fused speculation is AWS Neuron's; {engine} runs the draft "
                     f"{sp.draft_model} as a separate draft model, whose steps cost more "
                     "than the planner's fused pricing assumed")
    notes.append("draft-model speculation needs vLLM > 0.10.0 (V1 engine)")
    return ["--speculative-config", _compact_json(
        {"method": "draft_model", "model": sp.draft_ref, "num_speculative_tokens": sp.k})]


def sglang_args(s: EngineSettings) -> LaunchArgs:
    table = flag_tables()["sglang"]
    a = [*table.command, "--model-path", s.model_ref, "--host", "0.0.0.0",
         "--port", str(s.port), "--served-model-name", s.served_name,
         "--tp-size", str(s.tp), "--pp-size", str(s.pp)]
    if s.dp > 1:
        a += ["--dp-size", str(s.dp)]
    if s.moe and s.ep > 1:
        a += ["--ep-size", str(s.ep)]
    if s.precision == "fp8":
        a += ["--quantization", "fp8"]
    if s.kv_precision == "fp8":
        a += ["--kv-cache-dtype", "fp8_e4m3"]
    # SGLang caps running requests per server, not per DP rank.
    a += ["--max-running-requests", str(s.max_seqs_per_rank * s.dp),
          "--chunked-prefill-size", str(s.max_batched_tokens),
          "--context-length", str(s.max_model_len),
          "--mem-fraction-static", str(engine_profile("sglang").memory_fraction)]
    notes = ["prefix caching: SGLang's radix cache is on by default (--disable-radix-cache "
             "turns it off)"]
    if s.role != "both":
        a += ["--disaggregation-mode", s.role, "--disaggregation-transfer-backend", "nixl"]
        notes.append(_pd_note(s.role, "SGLang (NIXL transfer backend; Mooncake is the other)"))
    if s.spec is not None:
        a += _sglang_spec_args(s.spec)
        if s.spec.kind == "mtp" and s.max_seqs_per_rank * s.dp > 48:
            notes.append("SGLang's DeepSeek MTP captures CUDA graphs up to batch 48 by "
                         "default (docs/basic_usage/deepseek_v3.md): add --cuda-graph-bs "
                         "sizes up to --max-running-requests for larger decode batches")
    if (n := _weights_note(s, "SGLang")) is not None:
        notes.append(n)
    check_flags("sglang", a)
    return LaunchArgs("sglang", "sglang", a, notes=notes)


def _sglang_spec_args(sp: SpecSettings) -> list[str]:
    """DeepSeek MTP runs as SGLang's EAGLE algorithm on the checkpoint's MTP layers; a
    smaller draft model as STANDALONE. One candidate per step (eagle-topk 1), so k steps
    give k + 1 tokens to verify: the chain the planner priced."""
    if sp.kind == "mtp":
        a = ["--speculative-algorithm", "EAGLE"]
    else:
        a = ["--speculative-algorithm", "STANDALONE",
             "--speculative-draft-model-path", str(sp.draft_ref)]
    return a + ["--speculative-num-steps", str(sp.k), "--speculative-eagle-topk", "1",
                "--speculative-num-draft-tokens", str(sp.k + 1)]


def _trtllm_spec_config(sp: SpecSettings) -> dict[str, object]:
    """The LLM-API ``speculative_config``: MTPDecodingConfig on the checkpoint's MTP
    layers, DraftTargetDecodingConfig with the draft's repository otherwise."""
    if sp.kind == "mtp":
        return {"decoding_type": "MTP", "max_draft_len": sp.k}
    return {"decoding_type": "Draft_Target", "max_draft_len": sp.k,
            "speculative_model": sp.draft_ref}


def trtllm_args(s: EngineSettings) -> LaunchArgs:
    table = flag_tables()["trtllm"]
    a = [*table.command, s.model_ref, "--backend", "pytorch", "--host", "0.0.0.0",
         "--port", str(s.port), "--tp_size", str(s.tp), "--pp_size", str(s.pp)]
    if s.moe and s.ep > 1:
        a += ["--ep_size", str(s.ep)]
    a += ["--max_batch_size", str(s.max_seqs_per_rank * s.dp),
          "--max_num_tokens", str(s.max_batched_tokens),
          "--max_seq_len", str(s.max_model_len),
          "--kv_cache_free_gpu_memory_fraction",
          str(engine_profile("trtllm").memory_fraction),
          "--config", TRTLLM_CONFIG_NAME]
    # block reuse is TRT-LLM's prefix caching; the KV dtype is the one the plan priced
    config: dict[str, object] = {"kv_cache_config": {
        "enable_block_reuse": True, "dtype": TRTLLM_KV_DTYPE.get(s.kv_precision, "auto")}}
    if s.dp > 1:
        config["enable_attention_dp"] = True
    if s.spec is not None:
        config["speculative_config"] = _trtllm_spec_config(s.spec)
    notes = ["trtllm-serve names the model by its path: set `model:` in backends.yaml to "
             f"{s.model_ref!r} for this pool",
             "weight precision comes from the (ModelOpt) checkpoint's quantization config: "
             f"serve a {s.precision} checkpoint; the KV-cache dtype is set in the --config "
             "file (kv_cache_config.dtype)",
             "--config keys are checked against the LLM-API fields in "
             "deploy/data/engine_flags.yaml (trtllm.config_keys)"]
    if s.role != "both":
        notes.append(_pd_note(s.role, "TensorRT-LLM: run the pair under `trtllm-serve "
                                      "disaggregated` with a cache_transceiver_config in each "
                                      "server's config"))
    check_flags("trtllm", a)
    check_config("trtllm", config)
    return LaunchArgs("trtllm", "trtllm", a, config_yaml=config, notes=notes)


def _pd_note(role: str, how: str) -> str:
    other = "decode" if role == "prefill" else "prefill"
    return (f"{role} half of a disaggregated pair: its KV cache goes to (comes from) the "
            f"pair's {other} pool over the plan's kv_link; {how}. The tokenfleet gateway "
            "sends each request to the prefill pool first, then to the decode pool")


def launch_args(engine: str, family: str, s: EngineSettings) -> LaunchArgs:
    if family == "vllm":
        return _with_spec_note(vllm_args(s, engine), s)
    if family == "sglang":
        return _with_spec_note(sglang_args(s), s)
    if family == "trtllm":
        return _with_spec_note(trtllm_args(s), s)
    raise TokenfleetError(f"unknown engine family '{family}'")


def speculative_note(sp: SpecSettings) -> str:
    """What the planner priced for the pool's speculation, in the terms the engines log,
    so an operator can check the assumption on live traffic."""
    what = ("the model's MTP head" if sp.kind == "mtp" else
            f"draft model {sp.draft_model} ({sp.draft_ref})"
            + (", fused into the target's step" if sp.kind == "fused" else ""))
    mean_len = sp.tokens_per_step
    return (f"speculative decoding: {what} proposes k={sp.k} token(s) per step; the plan "
            f"priced this pool's TPOT and capacity at an acceptance rate of "
            f"{sp.acceptance:g} per proposed token, i.e. a mean acceptance length of "
            f"{mean_len:.2f} tokens per verify step and {(mean_len - 1) / sp.k:.0%} of "
            "draft tokens accepted. Compare the engine's logged figures on live traffic "
            "(each launch's notes say where): a lower rate means a slower pool than planned "
            "(put the measured rate in the scenario tier's speculative entry and re-plan)")


# Where each engine reports what its drafts achieve (accepted / drafted tokens).
ACCEPTANCE_LOGS = {
    "vllm": "vLLM logs 'Mean acceptance length' and 'Avg Draft acceptance rate' (Prometheus: "
            "vllm:spec_decode_num_accepted_tokens / vllm:spec_decode_num_draft_tokens)",
    "sglang": "SGLang's decode log prints 'accept len' (tokens per verify step)",
    "trtllm": "trtllm-serve's iteration stats (/metrics) carry specDecodingStats "
              "numAcceptedTokens / numDraftTokens",
}


def _with_spec_note(launch: LaunchArgs, s: EngineSettings) -> LaunchArgs:
    if s.spec is not None:
        launch.notes.append(
            f"speculative decoding priced at mean acceptance length "
            f"{s.spec.tokens_per_step:.2f}: {ACCEPTANCE_LOGS[launch.family]}")
    return launch
