"""Which instance recently received which prompt prefixes.

Prompts are cut into fixed-size character chunks; each chunk's hash chains the previous
one, so equal hashes mean equal prefixes (like vLLM's block hashes). The index maps a
chunk hash to the instances it was sent to, bounded by an LRU over chunk hashes so memory
stays flat however many prompts pass. Matching walks the prompt's chunks from the start
and stops at the first chunk nobody has: cost grows with the prompt, not with the fleet.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict


def chunk_hashes(text: str, chunk_chars: int, max_chunks: int) -> list[bytes]:
    """Chained hashes of the full chunks of `text` (a trailing partial chunk is ignored)."""
    out: list[bytes] = []
    prev = b""
    n = min(len(text) // chunk_chars, max_chunks)
    for i in range(n):
        prev = hashlib.blake2b(
            prev + text[i * chunk_chars : (i + 1) * chunk_chars].encode(), digest_size=8
        ).digest()
        out.append(prev)
    return out


class PrefixIndex:
    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._owners: OrderedDict[bytes, set[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def match(self, hashes: list[bytes]) -> dict[str, int]:
        """Instance id -> number of leading chunks it has seen."""
        matched: dict[str, int] = {}
        for depth, h in enumerate(hashes):
            owners = self._owners.get(h)
            if not owners:
                break
            advanced = False
            for inst in owners:
                if matched.get(inst, 0) == depth:
                    matched[inst] = depth + 1
                    advanced = True
            if not advanced:
                break
        return matched

    def insert(self, hashes: list[bytes], instance_id: str) -> None:
        owners_map = self._owners
        for h in hashes:
            owners = owners_map.get(h)
            if owners is None:
                owners_map[h] = {instance_id}
            else:
                owners.add(instance_id)
                owners_map.move_to_end(h)
        while len(owners_map) > self.max_entries:
            owners_map.popitem(last=False)

    def remove_instance(self, instance_id: str) -> None:
        for h in [h for h, o in self._owners.items() if instance_id in o]:
            owners = self._owners[h]
            owners.discard(instance_id)
            if not owners:
                del self._owners[h]
