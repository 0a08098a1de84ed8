"""vLLM's disaggregated prefill: prefill on one instance, decode on another.

The protocol of vLLM production-stack and vllm-router (docs/architecture.md §6):
1. POST the request to a prefill instance with `max_tokens: 1`, `stream: false` and
   `kv_transfer_params: {"do_remote_decode": true, "do_remote_prefill": false, ...null}`;
2. POST the original request to a decode instance with the `kv_transfer_params` the prefill
   answer returned (passed on unchanged; `null` is accepted: some connectors return none),
   and relay its (streamed) answer.
If the prefill step fails the request is served whole on the decode instance at once, so a
broken prefill pool costs one failed call, never a hang. The trigger decides per request:
`always`, `threshold` — when the prompt part the decode instance has not seen recently
(an estimate from a prefix index of what was sent there) is longer than
`prefilling_threshold_input_tokens`: short or mostly cached prompts are cheaper to prefill
where they decode — or `predicted`: per request, from the predicted prefill-pool wait, the
decode instance's slack and the uncached prompt (`split_decision.split_pays`).
For `predicted` the prefill pool's wait and the prefill speed come from the token-level load
model (`load_model`: the one estimator of prefill speed; the prefill leg is booked there and
teaches it when it answers); the disaggregator keeps only what nobody else tracks, the KV
transfer cost per token learnt from decode legs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sage_cp_plugin import load_model
from sage_cp_plugin.attempt_outcome import ChunkSink, Outcome
from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.executor import ExecutionCoordinator
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.prefix_index import PrefixIndex, local_chunk_keys
from sage_cp_plugin.sliding_min import SlidingMin
from sage_cp_plugin.split_decision import SplitView, split_pays
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.types import PDSeparationConfig, RequestKind

logger = logging.getLogger(__name__)

PREFILL_KV_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}

_CHUNK_CHARS = 256
_CHARS_PER_TOKEN = 4


class Disaggregator:
    """Decides which requests to split and runs the two steps."""

    def __init__(self, config: PDSeparationConfig) -> None:
        self.config = config
        self.decode_prefixes = PrefixIndex()
        self.prefill_failures = 0
        self.split_requests = 0
        # Best case seen: a decode leg's first token also waits for the decode engine.
        self.transfer_s_per_token = SlidingMin()

    @property
    def enabled(self) -> bool:
        return self.config.enabled and self.config.disaggregated

    def uncached_tokens(self, item: QueuedRequest, decode: InstanceState) -> int:
        hashes = local_chunk_keys(item.request.prompt_text(), _CHUNK_CHARS, 1024)
        cached_chunks = self.decode_prefixes.match(hashes).get(decode.instance_id, 0)
        return max(0, item.input_tokens - cached_chunks * _CHUNK_CHARS // _CHARS_PER_TOKEN)

    def wants_split(self, item: QueuedRequest, decode: InstanceState) -> bool:
        if not self.enabled or item.request.kind == RequestKind.EMBEDDING:
            return False
        if self.config.disaggregation_trigger == "always":
            return True
        return self.uncached_tokens(item, decode) > self.config.prefilling_threshold_input_tokens

    @property
    def predicted(self) -> bool:
        return self.config.disaggregation_trigger == "predicted"

    @staticmethod
    def prefill_wait_s(prefill: InstanceState, now: float) -> float:
        """The load model's predicted wait before `prefill` starts a new prompt."""
        return load_model.queue_wait_s(prefill, now)

    def split_pays(
        self,
        item: QueuedRequest,
        prefill: InstanceState,
        decode: InstanceState,
        *,
        whole: InstanceState | None,
        decode_limit: int,
        now: float,
    ) -> bool:
        """The `predicted` trigger for one request and one (prefill, decode) pair, against
        running it whole on `whole` (None: no instance could take it whole now)."""
        if not self.enabled or item.request.kind == RequestKind.EMBEDDING:
            return False
        slo = item.request.tpot_slo_ms
        uncached = self.uncached_tokens(item, decode)
        inf = float("inf")
        view = SplitView(
            uncached_tokens=uncached,
            prefill_s_per_token=load_model.prefill_s_per_token(prefill),
            transfer_s_per_token=self.transfer_s_per_token.get(0.0),
            prefill_wait_s=self.prefill_wait_s(prefill, now),
            whole_wait_s=inf if whole is None else load_model.queue_wait_s(whole, now),
            decode_step_s=load_model.decode_step_s(decode),
            decode_in_flight=decode.in_flight,
            decode_limit=decode_limit,
            tpot_slo_s=None if slo is None else slo / 1000.0,
            prefill_stall_s=load_model.cost_to_running_s(prefill, item.input_tokens, now),
            whole_stall_s=(
                0.0 if whole is None else load_model.cost_to_running_s(whole, uncached, now)
            ),
            prefill_s=load_model.prefill_time_s(prefill, item.input_tokens),
            whole_ttft_s=(
                inf if whole is None else load_model.predicted_ttft_s(whole, uncached, now)
            ),
            ttft_left_s=item.ttft_left_s(now),
        )
        return split_pays(view)

    async def run(
        self,
        executor: ExecutionCoordinator,
        item: QueuedRequest,
        prefill: InstanceState,
        decode: InstanceState,
        sink: ChunkSink | None,
        on_first_token: Callable[[], None] | None = None,
        *,
        priority: int | None = None,
        on_prefill_done: Callable[[], None] | None = None,
    ) -> tuple[Outcome, bool]:
        """Both steps; returns the decode outcome and whether the prefill step was used.
        `on_prefill_done` is called when the prefill step ends (answered or failed)."""
        self.split_requests += 1
        self.decode_prefixes.insert(
            local_chunk_keys(item.request.prompt_text(), _CHUNK_CHARS, 1024), decode.instance_id
        )
        params: dict[str, Any] | None
        try:
            try:
                first = await executor.run(
                    item.request,
                    prefill.instance,
                    extra={
                        "max_tokens": 1,
                        "stream": False,
                        "kv_transfer_params": dict(PREFILL_KV_PARAMS),
                    },
                    stream=False,
                    priority=priority,
                )
            finally:
                if on_prefill_done is not None:
                    on_prefill_done()
            params = first.kv_transfer_params
        except UpstreamError as exc:
            self.prefill_failures += 1
            logger.warning(
                "request %s: prefill on %s failed (%s); serving it whole on %s",
                item.request_id,
                prefill.instance_id,
                exc,
                decode.instance_id,
            )
            out = await executor.run(
                item.request,
                decode.instance,
                sink=sink,
                on_first_token=on_first_token,
                priority=priority,
            )
            return out, False
        prompt = first.prompt_tokens or item.input_tokens
        extra = {"kv_transfer_params": params}
        out = await executor.run(
            item.request,
            decode.instance,
            sink=sink,
            extra=extra,
            on_first_token=on_first_token,
            priority=priority,
        )
        if out.first_token_at is not None and prompt > 0:
            # The decode leg's first token: the KV pull plus about one decode step.
            step = load_model.decode_step_s(decode)
            pull = max(0.0, out.first_token_at - out.started_at - step)
            self.transfer_s_per_token.add(pull / prompt)
        return out, True
