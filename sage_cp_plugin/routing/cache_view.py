"""What a router may ask about engines' prefix caches.

A `PrefixCacheView` answers, for a queued request and its candidate instances, how many of
the request's prompt tokens each candidate would serve from its prefix cache. Implementations:
the exact index kept from vLLM's KV-cache events (`sage_cp_plugin.kvevents.view`) and the
approximate index of what was sent where. Reading is a pure function of the view's state;
`on_dispatch` lets a view that learns from routing decisions (the approximate one) learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.state import InstanceState


class PrefixCacheView(Protocol):
    def cached_tokens(self, item: QueuedRequest, candidates: Sequence[InstanceState]) -> list[int]:
        """Prompt tokens of ``item`` each candidate holds in its prefix cache, in order."""

    def on_dispatch(self, item: QueuedRequest, instance_id: str) -> None:
        """``item`` was sent to ``instance_id``."""
