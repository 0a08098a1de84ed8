"""Roofline step times of one vLLM instance: prefill chunks and decode steps.

A step costs max(FLOPs / achievable FLOP/s, bytes / achievable HBM bandwidth) per pipeline
stage (Williams et al., "Roofline", CACM 2009), plus the collectives of that stage and a
fixed per-step cost of vLLM's scheduler, sampler and kernel launches. Decode reads every
weight once per step and every cached token's KV, so it is memory-bound at small batch;
prefill multiplies weights by thousands of tokens and is compute-bound. Efficiencies are
the fractions of peak vLLM reaches (MFU/MBU), calibrated against the published vLLM step fits
quoted in docs/architecture.md §8 (Llama-3.1-8B on H100 TP1: 5.75 ms fixed + 6.0 us per decode seq).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from sage_cp_plugin.parallelism import communication as comm
from sage_cp_plugin.parallelism.gpu_spec import GPUSpec
from sage_cp_plugin.parallelism.layout import InstanceShape, spans_nodes
from sage_cp_plugin.parallelism.memory import MAX_NUM_BATCHED_TOKENS, weights_per_gpu_bytes
from sage_cp_plugin.parallelism.model_spec import ModelSpec

FloatArray = npt.NDArray[np.float64]
ACT_BYTES = 2.0  # activations travel in bf16


class Calibration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mfu: float = Field(default=0.55, gt=0, le=1, description="achieved / peak FLOP/s")
    mbu: float = Field(default=0.85, gt=0, le=1, description="achieved / peak HBM bandwidth")
    step_overhead_s: float = Field(default=0.8e-3, ge=0, description="scheduler + sampler")
    # vLLM's PP runs one virtual engine per stage; hand-off and scheduling gaps leave
    # stages idle part of the time (Megatron-LM reports ~10 % bubble at small micro-batch
    # counts). Charged on throughput, not on per-token latency.
    pp_efficiency: float = Field(default=0.9, gt=0, le=1)


class StepModel:
    """Step times of one shape; cheap scalar math so the planner can call it thousands of
    times."""

    def __init__(
        self, model: ModelSpec, gpu: GPUSpec, shape: InstanceShape, cal: Calibration
    ) -> None:
        self.model, self.gpu, self.shape, self.cal = model, gpu, shape, cal
        self.flops = gpu.tflops_for(model.dtype_bytes) * 1e12 * cal.mfu
        self.bw = gpu.hbm_bandwidth_gbps * 1e9 * cal.mbu
        self.layers = model.num_layers / shape.pp
        self.moe_layers = model.moe_layers / shape.pp
        self.shared_bytes = model.shared_params * model.dtype_bytes / (shape.tp * shape.pp)
        self.weight_bytes = weights_per_gpu_bytes(model, shape)
        self.kv_token_bytes = model.kv_bytes_per_token(shape.tp, shape.pp)
        self.attn_width = model.num_attention_heads * model.dim_per_head
        crossings = comm.pipeline_boundaries_crossing_nodes(gpu, shape.tp * shape.dp, shape.pp)
        self.pp_cross_fraction = crossings / max(1, shape.pp - 1)
        self.tp_cross = spans_nodes(shape.tp, gpu)
        self.expert_cross = spans_nodes(shape.expert_group, gpu)
        # Hot-path constants: every cost below is affine in the token count, so the planner's
        # thousands of calls reduce to a few multiplications.
        self.flops_per_token = 2.0 * model.active_params / (shape.tp * shape.pp)
        self.attn_flops_per_token_ctx = 4.0 * self.attn_width * self.layers / shape.tp
        self.coll0 = float(self._collectives(0.0))
        self.coll1 = float(self._collectives(1.0)) - self.coll0
        if model.is_moe:
            self.expert_keep = 1.0 - model.num_active_experts / model.num_experts
            per_expert = model.expert_params / (model.moe_layers * model.num_experts)
            self.expert_layer_bytes = (
                self.moe_layers
                * model.num_experts
                * per_expert
                * model.dtype_bytes
                / shape.expert_group
            )

    # -- building blocks ----------------------------------------------------------------
    def _linear_flops(self, tokens: float | FloatArray) -> float | FloatArray:
        """2 FLOPs per active parameter per token (this GPU's share). For MoE the DP ranks'
        tokens meet in the expert layers, spread over TP x DP GPUs: the share is the same."""
        return tokens * self.flops_per_token

    def _expert_bytes_read(self, tokens: float) -> float:
        """Distinct experts a batch touches: E (1 - (1 - k/E)^tokens) per MoE layer."""
        if not self.model.is_moe:
            return 0.0
        return float(self.expert_layer_bytes * (1.0 - self.expert_keep**tokens))

    def _collectives(self, tokens: float | FloatArray) -> float | FloatArray:
        """TP all-reduces (2 per layer), MoE dispatch/combine, one stage hand-off."""
        m, s, g = self.model, self.shape, self.gpu
        msg = tokens * m.hidden_size * ACT_BYTES
        dense_layers = self.layers - self.moe_layers
        t = 2.0 * dense_layers * comm.all_reduce_s(g, s.tp, msg)
        if m.is_moe:
            # attention output all-reduce within TP, then the expert layer across TP x DP
            t = t + self.moe_layers * comm.all_reduce_s(g, s.tp, msg)
            g_n = s.expert_group
            if s.expert_parallel:
                routed = msg * m.num_active_experts
                t = t + 2.0 * self.moe_layers * comm.all_to_all_s(g, g_n, routed)
            else:
                t = t + self.moe_layers * comm.all_reduce_s(g, g_n, msg * s.dp)
        if s.pp > 1:
            cross = comm.p2p_s(g, True, msg)
            local = comm.p2p_s(g, False, msg)
            t = t + self.pp_cross_fraction * cross + (1 - self.pp_cross_fraction) * local
        return t

    # -- decode -------------------------------------------------------------------------
    def decode_stage_s(self, batch: float, context: float) -> float:
        """One stage's decode step for ``batch`` sequences of mean ``context`` tokens."""
        b = max(batch, 1.0)
        flops = b * (self.flops_per_token + context * self.attn_flops_per_token_ctx)
        kv = b * context * self.kv_token_bytes
        if self.model.is_moe:
            nbytes = self.shared_bytes + self._expert_bytes_read(b * self.shape.dp) + kv
        else:
            nbytes = self.weight_bytes + kv
        return max(flops / self.flops, nbytes / self.bw) + self.coll0 + self.coll1 * b

    def tpot_s(self, batch_per_rank: float, context: float) -> float:
        """Time between two tokens of one sequence: it visits every stage once."""
        pp = self.shape.pp
        return pp * self.decode_stage_s(batch_per_rank / pp, context) + self.cal.step_overhead_s

    def decode_tokens_per_s(self, batch_per_rank: float, context: float) -> float:
        """Output tokens/s of one DP rank; PP keeps pp micro-batches in flight."""
        pp = self.shape.pp
        stage = self.decode_stage_s(batch_per_rank / pp, context) + self.cal.step_overhead_s / pp
        return batch_per_rank / (pp * stage) * (self.cal.pp_efficiency if pp > 1 else 1.0)

    def decode_is_memory_bound(self, batch: float, context: float) -> bool:
        b = max(batch, 1.0)
        flops = float(self._linear_flops(b))
        nbytes = self.weight_bytes + b * context * self.kv_token_bytes
        return nbytes / self.bw >= flops / self.flops

    # -- prefill ------------------------------------------------------------------------
    def prefill_stage_s(self, tokens: FloatArray) -> FloatArray:
        """One stage's time to prefill prompts of ``tokens`` tokens, chunked by vLLM's
        max_num_batched_tokens: each chunk re-reads the weights, attention is causal."""
        s = self.shape
        chunks = np.ceil(tokens / MAX_NUM_BATCHED_TOKENS)
        attn_flops = 2.0 * tokens * tokens * self.attn_width * self.layers / s.tp
        flops = np.asarray(self._linear_flops(tokens)) + attn_flops
        mem = chunks * self.weight_bytes / self.bw
        coll = (self.coll0 + self.coll1 * np.minimum(tokens, MAX_NUM_BATCHED_TOKENS)) * chunks
        return np.maximum(flops / self.flops, mem) + coll + chunks * self.cal.step_overhead_s

    def prefill_latency_s(self, tokens: FloatArray) -> FloatArray:
        """A prompt passes all pp stages one after the other."""
        return self.shape.pp * self.prefill_stage_s(tokens)

    def prefill_service_s(self, tokens: FloatArray) -> FloatArray:
        """Busy time a prompt costs one DP rank: stages overlap across prompts under PP."""
        eff = self.cal.pp_efficiency if self.shape.pp > 1 else 1.0
        return self.prefill_stage_s(tokens) / eff
