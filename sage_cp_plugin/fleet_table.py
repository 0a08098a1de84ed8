"""The fleet as one table, a row per instance, reread only where an instance changed.

A decision reads every candidate instance. Read object by object, that is half a dozen
objects per instance (state, scrape, estimates, prefill queue, instance description), and
between two decisions of a replay they are not in the CPU cache: the misses made most of a
decision's cost, far over the issue 10 budget (50 us at 64 instances, 100 us at 256). So
what a decision reads is kept here: per instance, whether it is routable and has a free slot
(Python lists), and the load model's inputs (prefill tokens queued, the head request being
prefilled, peers' load, running sequences, chunk size, speed class, KV in use and capacity)
in contiguous columns of floats, one number per row each.

Rows are kept current by change notices, not by rereading: an `InstanceState` (and its
`ScrapedLoad`) reports every field written to it (`state.watch`, set here), and a row is
recomputed from its state only when the next decision needs the table. Between two
decisions only the instances something happened to (a dispatch, a first token, a finish,
a scrape) are reread. What changes with time alone (the head request's prefill progress,
a scrape's fading weight) and the speeds (learnt per speed class: shared objects that
every first token moves) are computed at decision time (`table_times`,
`routing.pruned_pick`), with the same arithmetic in the same order as `load_model`, so
every prediction, and every decision, is the same float for float
(tests/test_fleet_table.py).

Instance descriptions (`ExecutionInstance`: slot limit, prompt limit, decode target, chunk
size) are read when a row is built or refreshed; they do not change while an instance is
registered.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import repeat
from operator import add, le
from typing import Any

import numpy as np

from sage_cp_plugin.head_drain import DrainKeys
from sage_cp_plugin.load_model import (
    DEFAULT_CHUNK_TOKENS,
)
from sage_cp_plugin.state import FleetSnapshot, InstanceState

Pool = tuple[str | None, bool]

_INF = float("inf")
# The table's float columns (one float per row each; `FleetTable.__init__` says what they hold).
_FLOAT_COLUMNS = (
    "least_col",
    "key_col",
    "seqs_col",
    "queued_col",
    "head_tokens_col",
    "head_start_col",
    "peer_col",
    "chunk_col",
    "kv_used_col",
    "kv_cap_col",
)


def _kv_row(s: InstanceState) -> tuple[float, float]:
    """(KV tokens in use, KV capacity) as `routing.kv_aware.kv_room` compares them
    (`used + tokens <= capacity`); an instance of unknown capacity has room unless vLLM
    reports its cache full: (0, inf), or (NaN, inf), which no comparison passes."""
    scraped = s.scraped
    cap = s.instance.kv_capacity_hint
    if cap is None:
        return (np.nan if scraped.fresh and scraped.kv_usage >= 1.0 else 0.0), np.inf
    used: float = s.decode_kv_tokens + s.prefill_tokens_queued
    if scraped.fresh:
        used = max(used, scraped.kv_usage * cap)
    return used, cap


class Candidates(list[InstanceState]):
    """A list of candidate states that also knows their rows in a `FleetTable` (so a router
    can read their load as arrays). Any other list works too, read state by state. Made by
    `with_rows()` (a list subclass without its own `__init__` is built at C speed)."""

    __slots__ = ("row_list", "rows", "table")
    rows: np.ndarray
    row_list: list[int]  # `rows` as Python ints (what the scans index with)
    table: FleetTable


def with_rows(
    states: Sequence[InstanceState],
    rows: np.ndarray,
    table: FleetTable,
    row_list: list[int] | None = None,
) -> Candidates:
    """`row_list`, when given, must be `rows.tolist()` (a pool's cached lists pass theirs,
    so a decision does not convert the array again)."""
    out = Candidates(states)
    out.rows = rows
    out.row_list = rows.tolist() if row_list is None else row_list
    out.table = table
    return out


class FleetTable:
    def __init__(self, fleet: FleetSnapshot) -> None:
        self.fleet = fleet
        self.states: list[InstanceState] = []
        self.row_of: dict[str, int] = {}
        self.dirty: set[int] = set()  # rows written to since the last `refresh`
        self.load_dirty: set[int] = set()  # ... since the last `refresh_load`
        self.kv_dirty: set[int] = set()  # ... whose KV columns `refresh_kv` has not reread
        self._built = False
        # Per row: healthy, not draining, circuit closed; and that with a free slot.
        self._routable: list[bool] = []
        self._free: list[bool] = []
        self.group_of_row: list[int] = []  # each row's speed class
        # The load model's inputs, per row, each in a contiguous column of floats (a decision
        # reads a few numbers of every candidate: a column keeps 8 rows' in one cache line).
        # `routing.pruned_pick` reads the first two of every candidate: a key from which the
        # least its tokens ahead (prefill queued plus peers') can be at any later time
        # follows (`head_drain`), and its running sequences (ours, peers'). Then
        # prefill tokens queued, the head request's tokens and since when it is prefilled
        # (inf without one), peers' prefill tokens, chunk size; KV tokens in use and
        # capacity (`_kv_row`, for `kv_room`'s C-level maps; reread by `refresh_kv`, only when
        # `kv_room` asks).
        self.least_col = array("d")
        self.key_col = array("d")
        self.seqs_col = array("d")
        self.queued_col = array("d")
        self.head_tokens_col = array("d")
        self.head_start_col = array("d")
        self.peer_col = array("d")
        self.chunk_col = array("d")
        self.kv_used_col = array("d")
        self.kv_cap_col = array("d")
        # Writes `key_col` (`head_drain`) when a row is reread, and every row's when its
        # floor moves; `pruned_pick` reads it.
        self.drain_keys = DrainKeys(self)
        self.one_chunk: float | None = None
        # Rows whose routability cannot be read from flags (circuit open: half-open with
        # time) and rows with a fresh scrape reporting work beyond ours (its weight fades
        # with time): both are recomputed per decision.
        self.circuit_open: set[int] = set()
        self.foreign: set[int] = set()
        # Speed classes: (prefill Ewma, decode Ewma, speed hint); shared Ewma objects are
        # one class (their values move with every first token, so they are read per decision).
        self.groups: list[tuple[Any, Any, float]] = []
        self._group_of: dict[tuple[int, int, float], int] = {}
        self._flags_version = 0
        # pool -> (flags version, routable, free, free rows)
        self._pool_lists: dict[Pool, tuple[int, list[InstanceState], Candidates]] = {}
        self._pool_rows: dict[Pool, tuple[np.ndarray, bool]] = {}

    # -- membership ------------------------------------------------------------------------
    def invalidate(self) -> None:
        """The fleet's membership changed: rows are rebuilt at the next use."""
        self._built = False

    def _build(self) -> None:
        for s in self.states:
            s.watch = None
            s.scraped.watch = None
        self.states = list(self.fleet.states.values())
        n = len(self.states)
        self.row_of = {s.instance_id: k for k, s in enumerate(self.states)}
        self._routable = [False] * n
        self._free = [False] * n
        # Rows are written from Python one float at a time into these columns (a plain
        # interpreter store; a numpy element assignment costs several times more per call,
        # and a refresh is all such writes).
        self.group_of_row = [0] * n
        for name in _FLOAT_COLUMNS:
            setattr(self, name, array("d", bytes(8 * n)))
        self.drain_keys = DrainKeys(self)
        self.circuit_open = set()
        self.foreign = set()
        self.groups = []
        self._group_of = {}
        self._pool_lists = {}
        self._pool_rows = {}
        # The chunk size, when every instance has the same (a scalar in the arithmetic).
        chunks = {s.instance.batched_tokens_hint or DEFAULT_CHUNK_TOKENS for s in self.states}
        self.one_chunk = float(chunks.pop()) if len(chunks) == 1 else None
        self.dirty = set(range(n))
        self.load_dirty = set(range(n))
        self.kv_dirty = set()
        # An instance's chunk size is part of its description (fixed while registered).
        for k, st in enumerate(self.states):
            self.chunk_col[k] = st.instance.batched_tokens_hint or DEFAULT_CHUNK_TOKENS
        for k, s in enumerate(self.states):
            s.watch = (self.dirty, k)
        self._built = True

    def detach(self) -> None:
        """Stop watching the states (the table is no longer used)."""
        for s in self.states:
            s.watch = None
            s.scraped.watch = None
        self.states = []
        self._built = False

    # -- rows ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Reread what the instances written to since the last call say about routability
        and free slots (every decision needs it; their load rows are reread by
        `refresh_load`, only when a router asks for the load)."""
        if not self._built:
            self._build()
        dirty = self.dirty
        if not dirty:
            return
        flags_changed = False
        routable, free, circuit_open = self._routable, self._free, self.circuit_open
        states = self.states
        for k in dirty:
            s = states[k]
            ok = s.healthy and not s.draining and not s.circuit_open
            has_slot = ok and s.in_flight + s.peer_in_flight < s.instance.slot_limit
            if ok != routable[k] or has_slot != free[k]:
                routable[k], free[k] = ok, has_slot
                flags_changed = True
            if s.circuit_open is not (k in circuit_open):
                (circuit_open.add if s.circuit_open else circuit_open.discard)(k)
                flags_changed = True
        self.load_dirty |= dirty
        dirty.clear()
        if flags_changed:
            self._flags_version += 1

    def refresh_load(self) -> None:
        """Reread the load rows of the instances written to since the last call (their KV
        columns are reread by `kv_room`, the only reader: `prefix_aware` decisions skip it)."""
        self.refresh()
        dirty = self.load_dirty
        if not dirty:
            return
        self.kv_dirty |= dirty
        regroup = False
        states, foreign, group_of_row, groups = (
            self.states,
            self.foreign,
            self.group_of_row,
            self.groups,
        )
        queued_col, head_tokens_col, head_start_col = (
            self.queued_col, self.head_tokens_col, self.head_start_col
        )  # fmt: skip
        peer_col, seqs_col, least_col = self.peer_col, self.seqs_col, self.least_col
        for k in dirty:
            s = states[k]
            scraped = s.scraped
            if scraped.watch is None:  # a new ScrapedLoad object, or the first refresh
                scraped.watch = (self.dirty, k)
            head = None
            for b in s.prefill_queue:  # load_model._drain_head: the first still prefilling
                if b.prefilling:
                    head = b
                    break
            if head is None:
                # No head: never drained (now - inf is not > 0, as `_drain_head` skips it).
                head_tokens, head_start = 0.0, _INF
            else:
                since, booked = s.prefill_head_since, head.booked_at
                head_tokens = head.prefill_tokens
                head_start = booked if booked > since else since
            # Still in its speed class (the same estimate objects and hint; `_regroup` keys
            # classes by them): compared by identity, no key built.
            g = group_of_row[k]
            if g >= len(groups):
                regroup = True
            else:
                pst_e, step_e, hint = groups[g]
                if (
                    s.prefill_s_per_token is not pst_e
                    or s.decode_s_per_token is not step_e
                    or s.instance.speed_hint != hint
                ):
                    # A new speed class, or one that may now be unused: renumber after the loop.
                    regroup = True
            queued_col[k] = s.prefill_tokens_queued
            head_tokens_col[k] = head_tokens
            head_start_col[k] = head_start
            peer_col[k] = s.peer_prefill_tokens
            seqs_col[k] = s.decode_seqs + s.prefill_seqs + s.peer_seqs
            # The least its tokens ahead can be (the head fully drained: by the prediction's
            # operations, each monotone); the key of a tighter bound is set below.
            lowest = queued_col[k] - head_tokens
            least_col[k] = (lowest if lowest > 0.0 else 0.0) + peer_col[k]
            if scraped.fresh and scraped.running + scraped.waiting - scraped.ours_at_scrape > 0:
                foreign.add(k)
            else:
                foreign.discard(k)
        # The keys of a tighter bound, valid from the last decision's time (`head_drain`).
        self.drain_keys.rekey(dirty)
        dirty.clear()
        if regroup:
            self._regroup()

    def refresh_kv(self) -> None:
        """Reread the KV columns of the rows whose load was reread since the last call."""
        self.refresh_load()
        dirty = self.kv_dirty
        if not dirty:
            return
        states, kv_used_col, kv_cap_col = self.states, self.kv_used_col, self.kv_cap_col
        for k in dirty:
            kv_used_col[k], kv_cap_col[k] = _kv_row(states[k])
        dirty.clear()

    def _regroup(self) -> None:
        """Number the speed classes in use (an instance joined one, or its speed estimates
        were replaced): O(instances), only when that happens."""
        self.groups, self._group_of = [], {}
        for k, s in enumerate(self.states):
            pst_e, step_e, hint = s.prefill_s_per_token, s.decode_s_per_token, s.instance.speed_hint
            key = (id(pst_e), id(step_e), hint)
            g = self._group_of.get(key)
            if g is None:
                g = self._group_of[key] = len(self.groups)
                self.groups.append((pst_e, step_e, hint))
            self.group_of_row[k] = g

    # -- routable and free, per pool -------------------------------------------------------
    def pool_rows(self, pool: Pool, eligible: list[InstanceState]) -> tuple[np.ndarray, bool]:
        """Rows of a pool's instances (in `eligible` order) and whether the table can answer
        for the pool alone: not when an instance has a prompt limit or a decode target
        (checked per request and per decode speed)."""
        cached = self._pool_rows.get(pool)
        if cached is None:
            rows = np.array([self.row_of[s.instance_id] for s in eligible], dtype=np.intp)
            simple = all(
                s.instance.max_prompt_tokens is None and s.instance.decode_target_s is None
                for s in eligible
            )
            cached = self._pool_rows[pool] = (rows, simple)
        return cached

    def routable_and_free(
        self, pool: Pool, eligible: list[InstanceState]
    ) -> tuple[list[InstanceState], Candidates] | None:
        """(routable, free) of a pool, as `Dispatcher.routable_and_free` computes them for a
        request that is not urgent and excludes nothing, without limits; None when the table
        cannot answer (an instance of the pool has an open circuit, a prompt limit or a
        decode target: the caller reads the states)."""
        self.refresh()
        cached = self._pool_lists.get(pool)  # only a pool the table answers for has lists
        if cached is not None and cached[0] == self._flags_version and not self.circuit_open:
            _, routable, free = cached
            # Copies: a caller may keep or change its lists; the cache must not change.
            return list(routable), with_rows(free, free.rows, self, free.row_list)
        rows, simple = self.pool_rows(pool, eligible)
        if not simple or self.circuit_open:
            return None
        if cached is None or cached[0] != self._flags_version:
            ok, has_slot = self._routable, self._free
            routable = [s for s, k in zip(eligible, rows.tolist(), strict=True) if ok[k]]
            at = [i for i, k in enumerate(rows.tolist()) if has_slot[k]]
            free = with_rows([eligible[i] for i in at], rows[at], self)
            cached = self._pool_lists[pool] = (self._flags_version, routable, free)
        _, routable, free = cached
        # Copies: a caller may keep or change its lists; the cache must not change with them.
        return list(routable), with_rows(free, free.rows, self, free.row_list)

    def kv_room(self, rows: Sequence[int], tokens: int) -> list[bool]:
        """`routing.kv_aware.kv_room(state, tokens)` for the instances at `rows`."""
        self.refresh_kv()
        # `used + tokens <= cap` per row, iterated in C (operator functions over the columns:
        # the same float operations, no bytecode per row).
        used = map(self.kv_used_col.__getitem__, rows)
        return list(map(le, map(add, used, repeat(tokens)), map(self.kv_cap_col.__getitem__, rows)))
