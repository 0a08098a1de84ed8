"""The simulator's tokenizer and its deterministic "model output".

Rule: **one token = one whitespace-separated word.** It is cheap, needs no vocabulary file, and
lets benchmarks build a prompt of exactly N tokens (N words); prompts sharing a text prefix share
a token prefix and therefore KV block hashes, so prefix caching behaves as it would on vLLM.

Chat messages are flattened with a fixed template, one ``<|role|>`` marker word per message
followed by its content, then a trailing ``<|assistant|>`` generation prompt:
``<|system|> You are terse <|user|> Hi <|assistant|>``.

Output: ``max_tokens`` words drawn from a small vocabulary by an RNG seeded with the instance
seed and a digest of the prompt, so the same prompt on the same seed always yields the same
text, and streamed deltas (``word``, `` word``, ...) concatenate to the non-streamed text.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

VOCAB: tuple[str, ...] = tuple(
    (
        "the of and to in is that for it as with was on be by this are from at an "
        "model token cache block batch prefill decode instance request latency fleet router "
        "policy queue stream vector engine server prompt output scale time step plan"
    ).split()
)
VOCAB_SIZE = 32000  # size of the pretend id space reported by /tokenize
# What str.split() splits ASCII text on, besides the space.
_OTHER_ASCII_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"


def tokenize(text: str) -> list[str]:
    return text.split()


def separators(text: str) -> np.ndarray | None:
    """Offsets of the spaces between the words of ``text`` when it is *plain*: ASCII, its
    only whitespace single spaces between words. Then ``tokenize(text)`` has
    ``len(seps) + 1`` words, word ``i`` ends at ``seps[i]`` and any run of words is a slice
    of ``text``, so the engine can count, hash and digest the prompt without building one
    string per word (a replay's prompts are plain). None otherwise."""
    if not text or not text.isascii():
        return None
    for c in _OTHER_ASCII_WHITESPACE:  # each test is a fast scan for one character
        if c in text:
            return None
    space = np.frombuffer(text.encode("ascii"), np.uint8) == 32
    if space[0] or space[-1] or np.count_nonzero(space[1:] & space[:-1]):
        return None  # leading, trailing or doubled spaces
    seps: np.ndarray = space.nonzero()[0]
    return seps


def token_id(word: str) -> int:
    """A stable pretend token id (the same in every process, unlike ``hash``)."""
    return zlib.crc32(word.encode()) % VOCAB_SIZE


def message_text(content: Any) -> str:
    """Text of an OpenAI message ``content``: a string, or a list of ``{"type": "text"}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    raise TypeError(f"message content must be a string or a list of parts, got {content!r}")


def chat_prompt(messages: Iterable[tuple[str, str]]) -> list[str]:
    """Flatten ``(role, text)`` pairs with the template described in the module docstring."""
    words: list[str] = []
    for role, text in messages:
        words.append(f"<|{role}|>")
        words.extend(text.split())
    words.append("<|assistant|>")
    return words


def prompt_digest(seed: int, prompt: Sequence[str] | str) -> int:
    """Digest of the words of ``prompt`` joined by single spaces (a plain text: itself)."""
    joined = prompt if isinstance(prompt, str) else " ".join(prompt)
    h = hashlib.blake2b(joined.encode(), digest_size=8, person=b"sage-cp-sim")
    h.update(seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(h.digest(), "little")


def generate(seed: int, prompt: Sequence[str] | str, n: int) -> list[str]:
    """The ``n`` output words of ``prompt`` (deterministic in ``seed`` and ``prompt``; a
    plain text, see `separators`, gives what its words give)."""
    return random.Random(prompt_digest(seed, prompt)).choices(VOCAB, k=n)


def text_seed(seed: int, text: str) -> int:
    """Seed for an embedding vector of ``text``."""
    return prompt_digest(seed, (text,))
