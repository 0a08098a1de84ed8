"""Model architecture facts the planner needs, with presets for common open models.

Numbers come from each model's Hugging Face ``config.json`` (hidden_size, num_hidden_layers,
num_attention_heads, num_key_value_heads, intermediate_size, vocab_size, num_local_experts /
n_routed_experts, num_experts_per_tok, moe_intermediate_size) and the published parameter
counts. Only what changes memory, FLOPs or communication is kept.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sage_cp_plugin.parallelism.errors import PlanningError, UnknownPresetError


class ModelSpec(BaseModel):
    """A decoder-only transformer, dense or mixture-of-experts (MoE)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    num_params: float = Field(gt=0, description="total parameters (all experts)")
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    intermediate_size: int = Field(gt=0, description="dense FFN width")
    vocab_size: int = Field(default=128_256, gt=0)
    dtype_bytes: float = Field(default=2.0, gt=0, description="bytes per weight (bf16=2, fp8=1)")
    kv_dtype_bytes: float = Field(default=2.0, gt=0)
    num_experts: int = Field(default=1, gt=0, description="routed experts per MoE layer")
    num_active_experts: int = Field(default=1, gt=0, description="experts each token uses")
    num_shared_experts: int = Field(default=0, ge=0)
    moe_intermediate_size: int | None = Field(default=None, gt=0)
    num_moe_layers: int | None = Field(default=None, ge=0)
    # Multi-head latent attention (DeepSeek-V3) caches one compressed vector per token and
    # layer (kv_lora_rank + rope dim = 512 + 64) instead of K and V per KV head.
    mla_kv_dim: int | None = Field(default=None, gt=0)
    max_context: int = Field(default=131_072, gt=0)
    hf_repo: str | None = Field(default=None, description="name passed to `vllm serve`")

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.num_kv_heads > self.num_attention_heads:
            raise PlanningError(
                f"num_kv_heads={self.num_kv_heads} exceeds "
                f"num_attention_heads={self.num_attention_heads} for model {self.name!r}"
            )
        if self.num_active_experts > self.num_experts:
            raise PlanningError(
                f"num_active_experts={self.num_active_experts} exceeds "
                f"num_experts={self.num_experts} for model {self.name!r}"
            )
        return self

    @property
    def serve_name(self) -> str:
        return self.hf_repo or self.name

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def moe_layers(self) -> int:
        if not self.is_moe:
            return 0
        return self.num_layers if self.num_moe_layers is None else self.num_moe_layers

    @property
    def expert_params(self) -> float:
        """Parameters of all routed experts (SwiGLU: gate, up and down projections)."""
        if not self.is_moe:
            return 0.0
        width = self.moe_intermediate_size or self.intermediate_size
        return float(self.moe_layers * self.num_experts * 3 * self.hidden_size * width)

    @property
    def shared_params(self) -> float:
        """Parameters every token touches: attention, embeddings, dense and shared FFNs."""
        return self.num_params - self.expert_params

    @property
    def active_params(self) -> float:
        """Parameters used per token: shared ones plus the active experts' share."""
        if not self.is_moe:
            return self.num_params
        return self.shared_params + self.expert_params * self.num_active_experts / self.num_experts

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.dtype_bytes

    def kv_bytes_per_token(self, tp: int = 1, pp: int = 1) -> float:
        """KV-cache bytes one token occupies on one GPU of a TP x PP group.

        KV heads split over TP ranks, but a rank always holds at least one head: with
        TP > num_kv_heads vLLM replicates heads, so KV memory stops shrinking. MLA's latent
        cache is replicated on every TP rank (vLLM), so TP does not shrink it at all.
        """
        layers = self.num_layers / pp
        if self.mla_kv_dim is not None:
            return layers * self.mla_kv_dim * self.kv_dtype_bytes
        heads_per_rank = max(1.0, self.num_kv_heads / tp)
        return 2.0 * layers * heads_per_rank * self.dim_per_head * self.kv_dtype_bytes

    @classmethod
    def dense_from_size(cls, model_size_gb: float, dtype_bytes: float = 2.0) -> ModelSpec:
        """A dense Llama-shaped model of the given weight size (for the document's API).

        Layer count and width follow the Llama-3 family's scaling (hidden ~ sqrt(params/12/L)),
        which is close enough for memory and roofline estimates.
        """
        if model_size_gb <= 0:
            raise PlanningError(f"model_size_gb={model_size_gb} must be > 0")
        params = model_size_gb * 1e9 / dtype_bytes
        layers = 32 if params < 15e9 else 64 if params < 45e9 else 80 if params < 150e9 else 126
        # Head counts are powers of two in that family (32, 64, 128), which keeps every
        # power-of-two TP degree legal (vLLM requires heads % TP == 0).
        heads = 2 ** max(0, round(math.log2((params / (12.0 * layers)) ** 0.5 / 128.0)))
        hidden = heads * 128
        return cls(
            name=f"dense-{model_size_gb:g}GB",
            num_params=params,
            num_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_kv_heads=min(8, heads),
            intermediate_size=int(hidden * 3.5),
            dtype_bytes=dtype_bytes,
        )


MODEL_PRESETS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec(
            name="Llama-3.1-8B",
            hf_repo="meta-llama/Llama-3.1-8B-Instruct",
            num_params=8.03e9,
            num_layers=32,
            hidden_size=4096,
            num_attention_heads=32,
            num_kv_heads=8,
            intermediate_size=14336,
        ),
        ModelSpec(
            name="Llama-3.3-70B",
            hf_repo="meta-llama/Llama-3.3-70B-Instruct",
            num_params=70.6e9,
            num_layers=80,
            hidden_size=8192,
            num_attention_heads=64,
            num_kv_heads=8,
            intermediate_size=28672,
        ),
        ModelSpec(
            name="Qwen3-32B",
            hf_repo="Qwen/Qwen3-32B",
            num_params=32.8e9,
            num_layers=64,
            hidden_size=5120,
            num_attention_heads=64,
            num_kv_heads=8,
            head_dim=128,
            intermediate_size=25600,
            vocab_size=151_936,
            max_context=40_960,
        ),
        ModelSpec(
            name="Mixtral-8x7B",
            hf_repo="mistralai/Mixtral-8x7B-Instruct-v0.1",
            num_params=46.7e9,
            num_layers=32,
            hidden_size=4096,
            num_attention_heads=32,
            num_kv_heads=8,
            intermediate_size=14336,
            vocab_size=32_000,
            num_experts=8,
            num_active_experts=2,
            max_context=32_768,
        ),
        # FP8 weights as released; 3 of 61 layers are dense, 58 are MoE with 256 routed experts
        # (top-8) plus one shared expert.
        ModelSpec(
            name="DeepSeek-V3",
            hf_repo="deepseek-ai/DeepSeek-V3",
            num_params=671e9,
            num_layers=61,
            hidden_size=7168,
            num_attention_heads=128,
            num_kv_heads=128,
            head_dim=128,
            intermediate_size=18432,
            vocab_size=129_280,
            dtype_bytes=1.0,
            num_experts=256,
            num_active_experts=8,
            num_shared_experts=1,
            moe_intermediate_size=2048,
            num_moe_layers=58,
            mla_kv_dim=576,
            max_context=163_840,
        ),
    )
}


def get_model_spec(name: str | ModelSpec) -> ModelSpec:
    """A preset by name (case-insensitive), or the spec itself."""
    if isinstance(name, ModelSpec):
        return name
    for key, spec in MODEL_PRESETS.items():
        if key.lower() == name.strip().lower():
            return spec
    raise UnknownPresetError("model", name, MODEL_PRESETS)
