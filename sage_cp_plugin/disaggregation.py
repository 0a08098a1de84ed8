"""vLLM's disaggregated prefill: prefill on one instance, decode on another.

The protocol of vLLM production-stack and vllm-router (DESIGN.md §6):
1. POST the request to a prefill instance with `max_tokens: 1`, `stream: false` and
   `kv_transfer_params: {"do_remote_decode": true, "do_remote_prefill": false, ...null}`;
2. POST the original request to a decode instance with the `kv_transfer_params` the prefill
   answer returned (passed on unchanged; `null` is accepted: some connectors return none),
   and relay its (streamed) answer.
If the prefill step fails the request is served whole on the decode instance at once, so a
broken prefill pool costs one failed call, never a hang. The trigger decides per request:
`always`, or `threshold` — when the prompt part the decode instance has not seen recently
(an estimate from a prefix index of what was sent there) is longer than
`prefilling_threshold_input_tokens`: short or mostly cached prompts are cheaper to prefill
where they decode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sage_cp_plugin.errors import UpstreamError
from sage_cp_plugin.executor import ChunkSink, ExecutionCoordinator, Outcome
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.prefix_index import PrefixIndex, chunk_hashes
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

    async def run(
        self,
        executor: ExecutionCoordinator,
        item: QueuedRequest,
        prefill: InstanceState,
        decode: InstanceState,
        sink: ChunkSink | None,
        on_first_token: Callable[[], None] | None = None,
    ) -> tuple[Outcome, bool]:
        """Both steps; returns the decode outcome and whether the prefill step was used."""
        self.split_requests += 1
        self.decode_prefixes.insert(
            chunk_hashes(item.request.prompt_text(), _CHUNK_CHARS, 1024), decode.instance_id
        )
        params: dict[str, Any] | None
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
            )
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
                item.request, decode.instance, sink=sink, on_first_token=on_first_token
            )
            return out, False
        extra = {"kv_transfer_params": params}
        out = await executor.run(
            item.request, decode.instance, sink=sink, extra=extra, on_first_token=on_first_token
        )
        return out, True
