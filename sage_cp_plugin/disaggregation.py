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
For `predicted` the disaggregator keeps what the decision needs and nobody else tracks: the
prompt tokens outstanding on each prefill instance, and the KV transfer cost per token
learnt from decode legs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.executor import ChunkSink, ExecutionCoordinator, Outcome
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.prefix_index import PrefixIndex, chunk_hashes
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
        self.prefill_backlog: dict[str, int] = {}  # prefill instance -> prompt tokens sent
        # Best case seen: a decode leg's first token also waits for the decode engine.
        self.transfer_s_per_token = SlidingMin()

    @property
    def enabled(self) -> bool:
        return self.config.enabled and self.config.disaggregated

    def uncached_tokens(self, item: QueuedRequest, decode: InstanceState) -> int:
        hashes = chunk_hashes(item.request.prompt_text(), _CHUNK_CHARS, 1024)
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

    def prefill_wait_s(self, prefill: InstanceState) -> float:
        """Local estimate of the prefill pool's queue: prompt tokens outstanding there at
        its observed prefill speed (the token-level load model will replace it)."""
        backlog = self.prefill_backlog.get(prefill.instance_id, 0)
        return backlog * prefill_speed(prefill)

    def split_pays(
        self,
        item: QueuedRequest,
        prefill: InstanceState,
        decode: InstanceState,
        *,
        whole_wait_s: float,
        decode_limit: int,
    ) -> bool:
        """The `predicted` trigger for one request and one (prefill, decode) pair."""
        if not self.enabled or item.request.kind == RequestKind.EMBEDDING:
            return False
        slo = item.request.tpot_slo_ms
        view = SplitView(
            uncached_tokens=self.uncached_tokens(item, decode),
            prefill_s_per_token=prefill_speed(prefill),
            transfer_s_per_token=self.transfer_s_per_token.get(0.0),
            prefill_wait_s=self.prefill_wait_s(prefill),
            whole_wait_s=whole_wait_s,
            decode_step_s=decode_step(decode),
            decode_in_flight=decode.in_flight,
            decode_limit=decode_limit,
            tpot_slo_s=None if slo is None else slo / 1000.0,
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
    ) -> tuple[Outcome, bool]:
        """Both steps; returns the decode outcome and whether the prefill step was used."""
        self.split_requests += 1
        self.decode_prefixes.insert(
            chunk_hashes(item.request.prompt_text(), _CHUNK_CHARS, 1024), decode.instance_id
        )
        params: dict[str, Any] | None
        pid = prefill.instance_id
        self.prefill_backlog[pid] = self.prefill_backlog.get(pid, 0) + item.input_tokens
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
                self.prefill_backlog[pid] -= item.input_tokens
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
        if first.first_token_at is not None and prompt > 0:
            prefill.prefill_s_per_token.add((first.first_token_at - first.started_at) / prompt)
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
            step = decode.decode_s_per_token.get(0.0)
            pull = max(0.0, out.first_token_at - out.started_at - step)
            self.transfer_s_per_token.add(pull / prompt)
        return out, True


def prefill_speed(s: InstanceState) -> float:
    """Observed seconds per prompt token, else the instance's prior (state.py)."""
    return s.prefill_s_per_token.get(1e-4 / s.instance.speed_hint)


def decode_step(s: InstanceState) -> float:
    """Observed inter-token time, else the instance's prior (state.py)."""
    return s.decode_s_per_token.get(0.02 / s.instance.speed_hint)
