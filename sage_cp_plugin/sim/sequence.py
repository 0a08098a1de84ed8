"""One request inside the simulated engine, and the engine's counters of what happened."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from sage_cp_plugin.sim.kv_cache import chain_hashes, text_chain_hashes


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    TRANSFERRING = "transferring"  # PD decode: pulling the prompt's KV from a prefill instance
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class RemotePrefill:
    """Validated ``kv_transfer_params`` of a decode request (the prefill ran elsewhere)."""

    engine_id: str
    request_id: str | None
    num_tokens: int


class SimSequence:
    """State the scheduler keeps per request; the HTTP layer reads results from it.

    ``output`` is the full deterministic answer, decided up front; the engine only decides
    *when* each word is released, one per step, into ``queue`` (streaming requests only).
    """

    __slots__ = (
        "_prompt",
        "arrival",
        "blocks",
        "done",
        "external_tokens",
        "finish_reason",
        "first_scheduled",
        "first_token",
        "hashes",
        "last_token",
        "max_tokens",
        "num_cached_tokens",
        "num_computed",
        "num_output",
        "num_registered",
        "output",
        "pin_for_remote_decode",
        "pinned_blocks",
        "pooling",
        "priority",
        "prompt_len",
        "prompt_seps",
        "prompt_text",
        "queue",
        "remote",
        "remote_done",
        "request_id",
        "status",
        "transfer_handle",
    )

    def __init__(
        self,
        request_id: str,
        prompt: list[str] | str,
        output: list[str],
        arrival: float,
        *,
        stream: bool,
        pooling: bool = False,
        remote: RemotePrefill | None = None,
        pin_for_remote_decode: bool = False,
        priority: int = 0,
        seps: np.ndarray | None = None,
    ) -> None:
        """``prompt``: its words, or a plain text (`tokens.separators` gave ``seps``) whose
        words are split off only if something asks for them (`prompt`)."""
        loop = asyncio.get_running_loop()
        self.request_id = request_id
        if isinstance(prompt, str):
            if seps is None:
                raise ValueError("a prompt given as text needs its separators")
            self._prompt: list[str] | None = None
            self.prompt_text: str | None = prompt
            self.prompt_seps: np.ndarray | None = seps
            self.prompt_len = seps.size + 1
        else:
            self._prompt = prompt
            self.prompt_text = self.prompt_seps = None
            self.prompt_len = len(prompt)
        self.output = output
        self.max_tokens = len(output)
        self.arrival = arrival
        self.priority = priority  # vLLM request priority: lower runs earlier
        self.pooling = pooling
        self.remote = remote
        self.remote_done = False
        self.pin_for_remote_decode = pin_for_remote_decode
        self.queue: asyncio.Queue[str | None] | None = asyncio.Queue() if stream else None
        self.done: asyncio.Future[None] = loop.create_future()
        self.status = SeqStatus.WAITING
        self.num_output = 0
        self.num_computed = 0
        self.num_registered = 0
        self.blocks: list[int] = []
        self.pinned_blocks: list[int] = []
        self.hashes: list[int] = []
        self.num_cached_tokens = 0
        self.external_tokens = 0
        self.first_scheduled: float | None = None
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.finish_reason: str | None = None
        self.transfer_handle: asyncio.TimerHandle | None = None

    @property
    def prompt(self) -> list[str]:
        """The prompt's words (split from a plain text on first use)."""
        if self._prompt is None:
            assert self.prompt_text is not None
            self._prompt = self.prompt_text.split()
        return self._prompt

    @property
    def num_tokens(self) -> int:
        """Tokens whose KV the sequence needs: the prompt plus what it has generated."""
        return self.prompt_len + self.num_output

    def tokens_upto(self, n: int) -> list[str]:
        p = self.prompt_len
        return self.prompt if n <= p else self.prompt + self.output[: n - p]

    def _prompt_words(self, lo: int, hi: int) -> list[str]:
        """Prompt words ``lo..hi-1`` (a plain text is split only there)."""
        if self._prompt is not None or self.prompt_text is None:
            return self.prompt[lo:hi]
        text, seps = self.prompt_text, self.prompt_seps
        assert seps is not None
        a = 0 if lo == 0 else int(seps[lo - 1]) + 1
        b = len(text) if hi >= self.prompt_len else int(seps[hi - 1])
        return text[a:b].split()

    def tokens_between(self, lo: int, hi: int) -> list[str]:
        """Tokens ``lo..hi-1`` without copying the prompt (a decode fills a block every
        ``block_size`` tokens; only that block is hashed)."""
        p = self.prompt_len
        if hi <= p:
            return self._prompt_words(lo, hi)
        if lo >= p:
            return self.output[lo - p : hi - p]
        return self._prompt_words(lo, p) + self.output[: hi - p]

    def extend_hashes(self, full: int, block_size: int) -> None:
        """Chain ``hashes`` up to ``full`` blocks (`kv_cache.chain_hashes`'s values; a
        plain prompt's blocks hashed from its text)."""
        have = len(self.hashes)
        if have >= full:
            return
        parent = self.hashes[-1] if have else 0
        text, seps = self.prompt_text, self.prompt_seps
        if text is not None and seps is not None:
            inside = min(full, self.prompt_len // block_size)  # blocks wholly in the prompt
            if have < inside:
                self.hashes.extend(text_chain_hashes(text, seps, block_size, have, inside, parent))
                have, parent = inside, self.hashes[-1]
        if have < full:
            tokens = self.tokens_between(have * block_size, full * block_size)
            self.hashes.extend(chain_hashes(tokens, block_size, 0, parent))

    @property
    def text(self) -> str:
        return " ".join(self.output[: self.num_output])

    @property
    def finished(self) -> bool:
        return self.status in (SeqStatus.FINISHED, SeqStatus.ABORTED)

    async def stream(self) -> AsyncIterator[str]:
        """Each generated word as the step producing it completes; ends on finish or abort."""
        if self.queue is None:
            raise RuntimeError(f"request {self.request_id} was not submitted for streaming")
        while True:
            word = await self.queue.get()
            if word is None:
                return
            yield word


@dataclass
class EngineCounters:
    """Plain counters mirrored into Prometheus; cheap to read in tests and ``/sim/state``."""

    steps: int = 0
    prefix_cache_queries: int = 0  # tokens, as vLLM counts; first admission of each request
    prefix_cache_hits: int = 0
    preempted_prefix_queries: int = 0  # re-admissions after preemption (vLLM: preempted_queries)
    preempted_prefix_hits: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0
    prompt_tokens_computed: int = 0
    generation_tokens: int = 0
    external_prompt_tokens: int = 0  # PD decode: prompt tokens whose KV arrived by transfer
    kv_transfers: int = 0
    pinned_released_by_fetch: int = 0
    pinned_expired: int = 0
    finished: int = 0
    aborted: int = 0
    max_batch_seqs: int = 0  # most sequences in one step: continuous-batching evidence
