"""Share of a prompt each candidate already caches: exact where KV events are live, else
the approximate index of what was sent where (which cannot see evictions).

Both are fractions of the prompt, so one score can mix instances in either mode.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.routing.prefix_index import PrefixIndex
from sage_cp_plugin.state import FleetSnapshot, InstanceState


def cached_fractions(
    item: QueuedRequest,
    candidates: Sequence[InstanceState],
    fleet: FleetSnapshot,
    approx: PrefixIndex | None,
    approx_hashes: list[bytes],
) -> list[float]:
    out = [0.0] * len(candidates)
    exact = fleet.exact_cache
    ids = item.prompt_token_ids
    uses_approx = approx is not None and bool(approx_hashes)
    if exact is not None and ids:
        tokens = exact.cached_tokens(item, candidates)
        n = len(ids)
        for i, c in enumerate(candidates):
            if exact.is_exact(c.instance_id):
                out[i] = -1.0 if tokens[i] == 0 else tokens[i] / n  # -1 marks "exact, none"
    if uses_approx:
        assert approx is not None
        matched = approx.match(approx_hashes)
        n_chunks = len(approx_hashes)
        for i, c in enumerate(candidates):
            if out[i] == 0.0:
                out[i] = matched.get(c.instance_id, 0) / n_chunks
    return [max(0.0, f) for f in out]
