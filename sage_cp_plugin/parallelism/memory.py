"""Does an instance shape hold the model, and how much KV cache is left?

Per GPU, as vLLM budgets it: ``gpu_memory_utilization`` (0.9) x memory = weights + peak
activations of one profiling step + fixed overhead (CUDA context, CUDA graphs, NCCL
buffers) + KV cache. Whatever remains after weights, activations and overhead is KV.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from sage_cp_plugin.parallelism.gpu_spec import GPUSpec
from sage_cp_plugin.parallelism.layout import InstanceShape
from sage_cp_plugin.parallelism.model_spec import ModelSpec

GIB = 1024.0**3
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization
MAX_NUM_BATCHED_TOKENS = 8192  # vLLM V1 default chunk for large GPUs
MAX_NUM_SEQS = 256  # vLLM default --max-num-seqs
FIXED_OVERHEAD_GB = 2.0  # CUDA context ~0.5 GiB + CUDA graphs ~1 GiB + NCCL buffers


class MemoryFit(BaseModel):
    """Per-GPU memory budget of one shape (GB) and the KV capacity it leaves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights_gb: float
    activation_gb: float
    overhead_gb: float
    kv_gb: float
    kv_tokens_per_rank: int
    max_seqs_per_rank: int
    fits: bool
    reason: str = ""


def weights_per_gpu_bytes(model: ModelSpec, shape: InstanceShape) -> float:
    """Shared weights split over TP x PP (replicated on DP ranks); experts over TP x DP x PP."""
    shared = model.shared_params * model.dtype_bytes / (shape.tp * shape.pp)
    experts = model.expert_params * model.dtype_bytes / (shape.expert_group * shape.pp)
    return shared + experts


def activation_bytes(model: ModelSpec, shape: InstanceShape) -> float:
    """Peak of vLLM's profiling run: a full chunk through the widest layer (gate+up of the
    FFN, per TP rank, plus residual and attention buffers) and the sampler's fp32 logits."""
    width = max(model.intermediate_size, model.moe_intermediate_size or 0)
    per_token = (2 * width / shape.tp + 4 * model.hidden_size) * 2.0
    logits = MAX_NUM_SEQS * model.vocab_size / shape.tp * 4.0
    return MAX_NUM_BATCHED_TOKENS * per_token + logits


def memory_fit(
    model: ModelSpec, gpu: GPUSpec, shape: InstanceShape, context_tokens: int
) -> MemoryFit:
    """Budget of ``shape``; it fits when the KV left holds one ``context_tokens`` sequence."""
    budget = gpu.memory_gb * 1e9 * GPU_MEMORY_UTILIZATION
    weights = weights_per_gpu_bytes(model, shape)
    act = activation_bytes(model, shape)
    overhead = FIXED_OVERHEAD_GB * GIB
    kv = budget - weights - act - overhead
    per_token = model.kv_bytes_per_token(shape.tp, shape.pp)
    tokens = int(kv // per_token) if kv > 0 else 0
    fits = tokens >= context_tokens
    reason = (
        ""
        if fits
        else (
            f"needs {(weights + act + overhead) / 1e9 + context_tokens * per_token / 1e9:.1f} GB "
            f"per GPU, has {budget / 1e9:.1f} GB"
        )
    )
    return MemoryFit(
        weights_gb=weights / 1e9,
        activation_gb=act / 1e9,
        overhead_gb=overhead / 1e9,
        kv_gb=max(kv, 0.0) / 1e9,
        kv_tokens_per_rank=tokens,
        max_seqs_per_rank=MAX_NUM_SEQS,
        fits=fits,
        reason=reason,
    )
