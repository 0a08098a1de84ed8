"""Stream markers: the end-of-stream sentinel and the idle heartbeat.

SAGE 0.3.2.4 gives operators no end-of-stream signal (docs/architecture.md §7), so a stateful operator
(the batcher, the in-flight window) cannot know when to flush its last partial batch. Our
sources emit `EndOfStream` as their last item. On SAGE's fast path the stages run on an
8-thread pool, so the marker may overtake items emitted before it: it carries how many items
came before it, and an operator flushes only once it has seen that many. `None` cannot be
the marker because SAGE drops `None` payloads, and the class must not be called
`StopSignal`, a name SAGE treats as "close the source".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EndOfStream:
    """Emitted once after the last item; `count` = items emitted before it (None: unknown)."""

    count: int | None = None


@dataclass(frozen=True)
class Heartbeat:
    """Emitted by live sources when idle, so time-window batches flush without new items."""


def is_marker(item: Any) -> bool:
    return isinstance(item, (EndOfStream, Heartbeat))


def with_end_marker(items: Iterable[Any]) -> Iterator[Any]:
    """`items` followed by `EndOfStream(count)`: `env.from_batch(list(with_end_marker(xs)))`."""
    n = 0
    for item in items:
        n += 1
        yield item
    yield EndOfStream(n)
