"""Prompt text of an exact token length, with real shared prefixes where a workload says so.

The simulator counts one token per whitespace-separated word, so a prompt of N tokens is N
words. Words are three lowercase letters: with the separator that is 4 characters per token,
which is also the coordinator's own estimate (`len(text) // 4`), so token estimates, the PD
length threshold and character-chunked prefix hashing all see the true length.

Text comes from one seeded random "tape" of words sliced at different offsets (cheap: no
per-request random draws). Sharing is controlled by a leading marker word:
- a prefix block (`hash_id`) is a marker word `h<id>` plus 511 tape words taken at an offset
  derived from the id, so the same id is the same text in every request and two ids never
  collide;
- the private remainder of a prompt starts with a marker unique to the request, so no two
  requests share anything beyond their common blocks, and a 16-token KV block or 64-word
  routing chunk never matches by accident.
"""

from __future__ import annotations

import hashlib

import numpy as np

from sage_cp_plugin.workloads.format import BLOCK_TOKENS, WorkloadRecord

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
_WORD_CHARS = 4  # "abc "


def _offset(seed: int, key: str, limit: int) -> int:
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % limit


class PromptBuilder:
    """Builds the prompt of a `WorkloadRecord` (see the module docstring)."""

    def __init__(self, seed: int = 0, tape_words: int = 1 << 18) -> None:
        rng = np.random.default_rng(seed)
        letters = _LETTERS[rng.integers(0, 26, size=(tape_words, 3))]
        words = np.char.add(np.char.add(letters[:, 0], letters[:, 1]), letters[:, 2])
        self.seed = seed
        self.tape = " ".join(words.tolist()) + " "
        self.tape_words = tape_words
        self._blocks: dict[int, str] = {}

    def words(self, n: int, key: str) -> str:
        """`n` tape words (with a trailing space) at an offset chosen by `key`."""
        if n <= 0:
            return ""
        out: list[str] = []
        while n > 0:
            take = min(n, self.tape_words // 2)
            start = _offset(self.seed, f"{key}:{n}", self.tape_words - take)
            out.append(self.tape[start * _WORD_CHARS : (start + take) * _WORD_CHARS])
            n -= take
        return "".join(out)

    def block(self, hash_id: int) -> str:
        """The text of one shared prefix block: exactly `BLOCK_TOKENS` words + a space."""
        text = self._blocks.get(hash_id)
        if text is None:
            text = f"h{hash_id} " + self.words(BLOCK_TOKENS - 1, f"block{hash_id}")
            if len(self._blocks) < 65536:  # bounded: a long trace's tail is rarely re-shared
                self._blocks[hash_id] = text
        return text

    def build(self, record: WorkloadRecord, index: int) -> str:
        """Prompt of `record`; `index` makes the private part unique to this request."""
        if record.prompt is not None:
            return record.prompt
        n = record.input_tokens
        parts: list[str] = []
        remaining = n
        for h in record.prefix_blocks:
            if remaining <= 0:
                break
            text = self.block(h)
            if remaining < BLOCK_TOKENS:
                # A partial last block: its first `remaining` words (marker included).
                text = " ".join(text.split(" ", remaining)[:remaining]) + " "
            parts.append(text)
            remaining -= min(remaining, BLOCK_TOKENS)
        if remaining > 0:
            parts.append(f"u{self.seed}x{index} " + self.words(remaining - 1, f"req{index}"))
        return "".join(parts).rstrip(" ")
