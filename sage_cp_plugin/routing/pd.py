"""Prefill/decode phase routing (the document's `PDRoutingStrategy`).

A request whose (estimated) prompt is long is *prefill-dominated* and goes to instances
specialised for prefill; a short one is *decode-dominated* and goes to decode instances;
general/hybrid instances are the fallback for both. (vLLM's real two-step disaggregated
prefill, which splits one request across two instances, is handled by the executor.)
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.types import (
    ExecutionInstance,
    ExecutionInstanceType,
    PDSeparationConfig,
    RequestMetadata,
    RequestPriority,
)

_PREFILL = ExecutionInstanceType.PREFILLING
_DECODE = ExecutionInstanceType.DECODING


class PDRoutingStrategy:
    def __init__(self, pd_config: PDSeparationConfig | None = None) -> None:
        self.pd_config = pd_config or PDSeparationConfig()

    def determine_request_phase(
        self, request: RequestMetadata, avg_output_tokens: float = 100.0
    ) -> ExecutionInstanceType:
        """PREFILLING or DECODING for this request (HYBRID when separation is off)."""
        cfg = self.pd_config
        if not cfg.enabled or cfg.routing_policy == "none":
            return ExecutionInstanceType.HYBRID
        input_tokens = request.estimated_input_tokens()
        output_tokens = request.max_tokens or int(avg_output_tokens)
        if cfg.routing_policy == "adaptive":
            urgent = request.priority <= RequestPriority.HIGH
            tight = request.ttft_slo_ms is not None and request.ttft_slo_ms < 100
            if (urgent or tight) and input_tokens <= cfg.prefilling_threshold_input_tokens:
                return _DECODE
        if input_tokens > cfg.prefilling_threshold_input_tokens:
            return _PREFILL
        if output_tokens > 0 and input_tokens / output_tokens > cfg.prefilling_threshold_ratio:
            return _PREFILL
        return _DECODE

    @staticmethod
    def get_instance_specialization(instance: ExecutionInstance) -> dict[str, float]:
        """How well an instance suits each phase, 0..1."""
        t = instance.instance_type
        if t == _PREFILL:
            return {"prefilling_score": 1.0, "decoding_score": 0.0}
        if t == _DECODE:
            return {"prefilling_score": 0.0, "decoding_score": 1.0}
        if t == ExecutionInstanceType.EMBEDDING:
            return {"prefilling_score": 0.0, "decoding_score": 0.0}
        return {"prefilling_score": 0.7, "decoding_score": 0.7}

    def filter_by_phase(
        self, candidates: Sequence[InstanceState], phase: ExecutionInstanceType | None
    ) -> list[InstanceState]:
        """The best-specialised tier of candidates for `phase`.

        Specialised instances first, then general/hybrid ones, then (only when nothing
        else can take it) instances specialised for the other phase: a vLLM instance
        configured as a KV producer or consumer still serves whole requests.
        """
        if phase not in (_PREFILL, _DECODE):
            return list(candidates)
        score_key = "prefilling_score" if phase == _PREFILL else "decoding_score"
        tiers: dict[float, list[InstanceState]] = {}
        for c in candidates:
            score = self.get_instance_specialization(c.instance)[score_key]
            tiers.setdefault(score, []).append(c)
        for score in sorted(tiers, reverse=True):
            if tiers[score]:
                return tiers[score]
        return []

    def recommend_parallelism_config(
        self, instance: ExecutionInstance, phase: ExecutionInstanceType | None = None
    ) -> dict[str, int]:
        phase = phase or instance.instance_type
        if phase == _PREFILL and instance.prefilling_config is not None:
            cfg_p = instance.prefilling_config
            return {
                "tensor_parallel_size": cfg_p.tensor_parallel_size or instance.tensor_parallel_size,
                "pipeline_parallel_size": cfg_p.pipeline_parallel_size
                or instance.pipeline_parallel_size,
            }
        if phase == _DECODE and instance.decoding_config is not None:
            cfg_d = instance.decoding_config
            return {
                "tensor_parallel_size": cfg_d.tensor_parallel_size or instance.tensor_parallel_size,
                "pipeline_parallel_size": cfg_d.pipeline_parallel_size
                or instance.pipeline_parallel_size,
            }
        return {
            "tensor_parallel_size": instance.tensor_parallel_size,
            "pipeline_parallel_size": instance.pipeline_parallel_size,
        }
