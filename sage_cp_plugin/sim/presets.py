"""Engine presets: published step-time fits per model/GPU pair, and derived TP degrees.

The base fits (docs/architecture.md §8) are linear models of one vLLM engine step:
``t = b0 + b1 * prefill_tokens_in_step + b2 * decode_seqs_in_step``.

Scaling rule for derived tensor-parallel degrees (from a measured base at ``tp_base``):
- ``b1`` and ``b2`` are per-token/per-sequence compute, sharded across TP ranks, so they scale
  as ``tp_base / tp``; each doubling of TP adds ~10 % back for the extra all-reduce traffic:
  ``b = b_base * (tp_base / tp) * (1 + 0.10 * log2(tp / tp_base))``.
- ``b0`` is fixed per-step overhead (scheduling, kernel launches, all-reduce latency) which does
  not shrink with more GPUs; it grows ~15 % per doubling from the extra synchronisation:
  ``b0 = b0_base * (1 + 0.15 * log2(tp / tp_base))``.
- KV blocks come from a memory model: ``0.9 * tp * gpu_mem - weights`` bytes left for KV,
  divided by the model's KV bytes per token (fp16, GQA) and the 16-token block size.
These are coarse but monotone, which is what the parallelism planner needs to rank layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sage_cp_plugin.errors import ConfigurationError

BLOCK_SIZE = 16
_GPU_MEM_UTILISATION = 0.9
_GIB = 1024**3


@dataclass(frozen=True, slots=True)
class EnginePreset:
    """Step-time coefficients and capacity of one simulated engine."""

    name: str
    b0_ms: float
    b1_us_per_token: float
    b2_us_per_seq: float
    num_kv_blocks: int
    tp: int = 1
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    description: str = ""


@dataclass(frozen=True, slots=True)
class _ModelGpu:
    """What the memory model needs to size the KV cache of one model on one GPU type."""

    model: str
    gpu: str
    gpu_mem_gib: float
    weights_gib: float
    kv_bytes_per_token: int  # 2 (K,V) * layers * kv_heads * head_dim * 2 bytes (fp16)


_LLAMA_8B_H100 = _ModelGpu("llama-3.1-8b", "h100", 80, 15.0, 2 * 32 * 8 * 128 * 2)
_LLAMA_8B_A100 = _ModelGpu("llama-3.1-8b", "a100", 80, 15.0, 2 * 32 * 8 * 128 * 2)
_LLAMA_70B_H100 = _ModelGpu("llama-3.3-70b", "h100", 80, 131.0, 2 * 80 * 8 * 128 * 2)


def _kv_blocks(mg: _ModelGpu, tp: int) -> int:
    free_bytes = (_GPU_MEM_UTILISATION * tp * mg.gpu_mem_gib - mg.weights_gib) * _GIB
    return max(0, int(free_bytes // (mg.kv_bytes_per_token * BLOCK_SIZE)))


def _derive(mg: _ModelGpu, tp_base: int, b0: float, b1: float, b2: float, tp: int) -> EnginePreset:
    doublings = math.log2(tp / tp_base)
    shard = tp_base / tp
    return EnginePreset(
        name=f"{mg.model}-{mg.gpu}-tp{tp}",
        b0_ms=round(b0 * (1 + 0.15 * doublings), 3),
        b1_us_per_token=round(b1 * shard * (1 + 0.10 * doublings), 3),
        b2_us_per_seq=round(b2 * shard * (1 + 0.10 * doublings), 3),
        num_kv_blocks=_kv_blocks(mg, tp),
        tp=tp,
        description=(
            f"{mg.model} on {tp}x{mg.gpu.upper()}"
            + (" (published fit)" if tp == tp_base else f" (derived from TP{tp_base})")
        ),
    )


def _build() -> dict[str, EnginePreset]:
    presets: list[EnginePreset] = []
    for tp in (1, 2, 4, 8):
        presets.append(_derive(_LLAMA_8B_H100, 1, 5.75, 17.25, 6.0, tp))
        presets.append(_derive(_LLAMA_8B_A100, 1, 16.4, 47.8, 18.2, tp))
    # 70B weights do not leave room for a useful KV cache below TP4 on 80 GB cards.
    for tp in (4, 8):
        presets.append(_derive(_LLAMA_70B_H100, 4, 12.6, 76.4, 66.8, tp))
    presets.append(
        EnginePreset(
            name="zero",
            b0_ms=0.0,
            b1_us_per_token=0.0,
            b2_us_per_seq=0.0,
            num_kv_blocks=65536,
            max_num_seqs=1024,
            max_num_batched_tokens=65536,
            description="zero latency, for measuring the control plane's own overhead",
        )
    )
    return {p.name: p for p in presets}


PRESETS: dict[str, EnginePreset] = _build()
DEFAULT_PRESET = "llama-3.1-8b-h100-tp1"


def get_preset(name: str) -> EnginePreset:
    """The preset called ``name``; an unknown name lists every known one."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown engine preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None


def preset_names() -> list[str]:
    return sorted(PRESETS)
