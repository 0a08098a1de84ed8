"""vLLM KV-cache events: which instance caches which blocks (docs/kv-events.md)."""

from sage_cp_plugin.kvevents.index import BlockIndex, prompt_block_hashes
from sage_cp_plugin.kvevents.tracker import KVEventTracker
from sage_cp_plugin.kvevents.view import EventsOrApproximateView, ExactPrefixView

__all__ = [
    "BlockIndex",
    "EventsOrApproximateView",
    "ExactPrefixView",
    "KVEventTracker",
    "prompt_block_hashes",
]
