"""Layouts: how a fleet of GPUs is cut into vLLM instances, and which layouts exist.

An *instance* is one ``vllm serve`` process group: TP x PP x DP GPUs. For dense models DP
across the fleet is expressed as replicas (separate servers the router balances), so an
instance has ``dp = 1``. For MoE models vLLM's ``--data-parallel-size`` runs attention
data-parallel while the expert layers span all TP x DP ranks (expert-parallel with
``--enable-expert-parallel``, otherwise tensor-parallel experts), so ``dp`` lives inside
the instance. A *pool* is a number of identical instances with one role; a *layout* is one
general pool, or a prefill pool plus a decode pool (disaggregated serving).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from sage_cp_plugin.parallelism.gpu_spec import GPUSpec
from sage_cp_plugin.parallelism.model_spec import ModelSpec


class Role(StrEnum):
    GENERAL = "general"
    PREFILL = "prefill"
    DECODE = "decode"


class InstanceShape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tp: int = Field(default=1, gt=0)
    pp: int = Field(default=1, gt=0)
    dp: int = Field(default=1, gt=0)
    expert_parallel: bool = False

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def expert_group(self) -> int:
        """GPUs one MoE layer's experts are spread over (vLLM: TP x DP)."""
        return self.tp * self.dp

    @property
    def ep_size(self) -> int:
        return self.expert_group if self.expert_parallel else 1

    @property
    def label(self) -> str:
        text = f"TP{self.tp} PP{self.pp}"
        if self.dp > 1:
            text += f" DP{self.dp}"
        if self.expert_parallel:
            text += f" EP{self.ep_size}"
        return text


class Pool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    shape: InstanceShape
    replicas: int = Field(gt=0)

    @property
    def gpus(self) -> int:
        return self.shape.gpus * self.replicas

    @property
    def label(self) -> str:
        return f"{self.replicas}x[{self.shape.label}]"


class Layout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pools: tuple[Pool, ...] = Field(min_length=1, max_length=2)

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools)

    @property
    def disaggregated(self) -> bool:
        return any(p.role is not Role.GENERAL for p in self.pools)

    @property
    def label(self) -> str:
        if not self.disaggregated:
            return self.pools[0].label
        return " + ".join(f"{p.role.value[0].upper()}:{p.label}" for p in self.pools)

    @property
    def fleet_dp(self) -> int:
        """Data-parallel width across the fleet (replicas x in-instance DP) of the first pool."""
        return self.pools[0].replicas * self.pools[0].shape.dp


def powers_of_two(limit: int) -> list[int]:
    out, x = [], 1
    while x <= limit:
        out.append(x)
        x *= 2
    return out


def enumerate_shapes(model: ModelSpec, max_gpus: int) -> list[InstanceShape]:
    """Every instance shape vLLM accepts for this model within ``max_gpus``.

    TP must divide the attention heads (vLLM checks this); sizes are powers of two as in
    practice. PP is at most the layer count. MoE shapes add in-instance DP and EP on/off.
    """
    shapes: list[InstanceShape] = []
    for tp in powers_of_two(max_gpus):
        if model.num_attention_heads % tp:
            continue
        for pp in powers_of_two(max_gpus // tp):
            if pp > model.num_layers:
                continue
            if not model.is_moe:
                shapes.append(InstanceShape(tp=tp, pp=pp))
                continue
            for dp in powers_of_two(max_gpus // (tp * pp)):
                shapes.append(InstanceShape(tp=tp, pp=pp, dp=dp))
                if tp * dp > 1:
                    shapes.append(InstanceShape(tp=tp, pp=pp, dp=dp, expert_parallel=True))
    return shapes


def spans_nodes(group_gpus: int, gpu: GPUSpec) -> bool:
    """A group of consecutive GPUs crosses nodes when it is larger than one node
    (instances are packed node-aligned, so power-of-two groups never straddle otherwise)."""
    return group_gpus > gpu.gpus_per_node
