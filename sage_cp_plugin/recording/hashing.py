"""Salted, chained hashes of a prompt's token blocks (what the log keeps instead of text).

Block i's hash covers the salt, block i-1's hash and block i's tokens, as vLLM's prefix-cache
block hashes do: two prompts share their first k hashes exactly when they share their first
k full blocks. Only full blocks are hashed (a partial last block is never shareable in vLLM
either). Hashes are 63-bit non-negative integers so they fit JSON numbers and replay as
`WorkloadRecord.prefix_blocks` ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_MASK = (1 << 63) - 1


def block_hashes(tokens: Sequence[str] | Sequence[int], block: int, salt: bytes) -> list[int]:
    """Chained hashes of the full `block`-token blocks of `tokens`."""
    out: list[int] = []
    prev = b""
    for start in range(0, len(tokens) - block + 1, block):
        chunk = " ".join(map(str, tokens[start : start + block])).encode()
        digest = hashlib.blake2b(prev + chunk, key=salt[:64], digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") & _MASK)
        prev = digest
    return out
