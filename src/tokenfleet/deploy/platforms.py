"""Per vendor and per chip: which engine serves a pool, in which image, under which
Kubernetes resource name, how many chips one node holds (``data/platforms.yaml``)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tokenfleet.errors import TokenfleetError

EngineFamily = Literal["vllm", "sglang", "trtllm"]
# Platform builds of vLLM take vLLM's flags (the TPU and Neuron plugins and the assumed
# Maia build run `vllm serve`), so their launch arguments come from the vLLM table.
FLAG_FAMILY: dict[str, EngineFamily] = {
    "vllm": "vllm", "vllm-tpu": "vllm", "vllm-neuron": "vllm", "vllm-maia": "vllm",
    "sglang": "sglang", "trtllm": "trtllm",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VendorPlatform(_Strict):
    engine: str = Field(description="engine chosen when plan.json names none")
    alternatives: list[str] = []
    image: str
    resource: str = Field(description="Kubernetes extended resource of one chip")
    resource_source: str
    assumption: bool = False


class ChipPlatform(_Strict):
    chips_per_node: int = Field(ge=1)
    gke_accelerator: str | None = None
    instance_type: str | None = None
    source: str


class Platforms(_Strict):
    vendors: dict[str, VendorPlatform]
    accelerators: dict[str, ChipPlatform]

    def vendor(self, name: str) -> VendorPlatform:
        try:
            return self.vendors[name]
        except KeyError:
            raise TokenfleetError(f"no deployment platform for vendor '{name}'; known: "
                                  f"{', '.join(self.vendors)}") from None

    def chip(self, accelerator: str) -> ChipPlatform:
        try:
            return self.accelerators[accelerator]
        except KeyError:
            raise TokenfleetError(
                f"no node size for accelerator '{accelerator}' in deploy/data/platforms.yaml; "
                f"known: {', '.join(self.accelerators)}") from None


@lru_cache(maxsize=1)
def load_platforms() -> Platforms:
    text = resources.files("tokenfleet.deploy").joinpath("data/platforms.yaml").read_text()
    return Platforms.model_validate(yaml.safe_load(text))


class EngineChoice(_Strict):
    engine: str
    family: EngineFamily
    chosen_by: Literal["plan", "export-default"]
    reason: str


def choose_engine(vendor: str, plan_engine: str | None) -> EngineChoice:
    """The engine of a pool: plan.json's when it names one, else the vendor's default."""
    if plan_engine:
        fam = FLAG_FAMILY.get(plan_engine.lower())
        if fam is None:
            raise TokenfleetError(f"plan names engine '{plan_engine}'; export knows "
                                  f"{', '.join(FLAG_FAMILY)}")
        return EngineChoice(engine=plan_engine.lower(), family=fam, chosen_by="plan",
                            reason="named in plan.json")
    v = load_platforms().vendor(vendor)
    reason = f"plan.json names no engine; {v.engine} is the default for {vendor} chips"
    if v.assumption:
        reason += " (assumption: " + v.resource_source.split("assumption:", 1)[-1].strip() + ")"
    return EngineChoice(engine=v.engine, family=FLAG_FAMILY[v.engine], chosen_by="export-default",
                        reason=reason)


def engines_for(vendor: str) -> list[str]:
    """Every engine export can write launch arguments for on this vendor's chips."""
    v = load_platforms().vendor(vendor)
    return [v.engine, *v.alternatives]
