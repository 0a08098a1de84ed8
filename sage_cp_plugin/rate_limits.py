"""Rate limits per tenant and for the whole control plane: requests and tokens per minute.

A tenant is the request's `user_id` (OpenAI's `user` field or the `x-sage-user` header);
requests without one are the tenant `anonymous`. Limits (OpenAI's RPM/TPM, LiteLLM's
per-user limits):
- `tenants`: a limit for a named tenant;
- `default`: the limit of every other tenant, each on its own;
- `total`: all tenants together (also caps clients that invent a new `user` per request).

A request counts one request and its prompt tokens as estimated at admission plus
`max_tokens` (the coordinator's default when not given): tokens are counted when the request
is admitted, as OpenAI counts `max_tokens` against TPM, so a limit holds before the answer
is known. A request over a limit is refused with `RateLimitedError` (HTTP 429 with
Retry-After: when enough of the window will have expired to admit it); one that could never
pass (more tokens than the limit allows in a minute) with `RequestExceedsRateLimitError` (400).

The window is the last 60 s in one-second buckets (between 59 and 60 s of history). Replicas
(`fleetshare`) share usage: each publishes its own buckets of the tenants whose usage changed
(ages, not timestamps, so the replicas' clocks need not agree), and every replica checks a
request against its own usage plus its peers' as last heard. Sharing is best effort: two
replicas may admit in the same delivery delay (~0.5 ms) what only one should have. While the
shared store is unreachable a replica admits only its share of each limit (the limit over
the number of replicas it last heard, itself included), so the replicas together stay within
it; its peers' usage already heard keeps counting until it ages out.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sage_cp_plugin.errors import RequestRejectedError, RetryLaterError
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.types import RequestKind

WINDOW_S = 60
SWEEP_EVERY = 1024  # admissions between two sweeps of tenants gone quiet
# Set while the parts of one request are admitted (an embeddings list split across
# instances): the request was charged once, whole, before them (`charged_once`).
_CHARGED: ContextVar[bool] = ContextVar("sage_cp_rate_limit_charged", default=False)
ANONYMOUS = "anonymous"
TOTAL = "*"  # the usage key of the `total` limit (never a tenant: see `tenant_of`)


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimit:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError("a rate limit needs requests_per_minute or tokens_per_minute")
        return self


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: RateLimit | None = None
    tenants: dict[str, RateLimit] = Field(default_factory=dict)
    total: RateLimit | None = None

    def limit_of(self, tenant: str) -> RateLimit | None:
        return self.tenants.get(tenant, self.default)


def counted_tokens(item: QueuedRequest) -> int:
    """Tokens a request counts against a tokens-per-minute limit (and, when the engine
    reported none, against a quota): its prompt, plus the tokens it may generate
    (`max_tokens`, as OpenAI counts; none for embeddings)."""
    if item.request.kind == RequestKind.EMBEDDING:
        return item.input_tokens
    return item.input_tokens + item.output_tokens


def _whose(tenant: str) -> str:
    return "the control plane's total" if tenant == TOTAL else f"tenant {tenant}'s"


class RateLimitedError(RetryLaterError):
    code = "rate_limit_exceeded"

    def __init__(self, tenant: str, what: str, limit: int, retry_after_s: float) -> None:
        self.tenant, self.what, self.limit = tenant, what, limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"rate limit reached: {_whose(tenant)} limit of {limit} {what} per minute; retry after "
            f"{retry_after_s:.1f}s"
        )


class RequestExceedsRateLimitError(RequestRejectedError):
    status_code = 400

    def __init__(self, tenant: str, tokens: int, limit: int) -> None:
        super().__init__(
            f"this request counts {tokens} tokens (prompt + max_tokens), more than "
            f"{_whose(tenant)} limit of {limit} tokens per minute: it can never be admitted; "
            "lower max_tokens or shorten the prompt"
        )


@contextmanager
def charged_once() -> Iterator[None]:
    """Admit the parts of a request already charged whole without charging them again."""
    token = _CHARGED.set(True)
    try:
        yield
    finally:
        _CHARGED.reset(token)


def already_charged() -> bool:
    return _CHARGED.get()


class Usage:
    """One key's usage over the window: (bucket, requests, tokens), oldest first, with totals.
    Own buckets are whole seconds of this process's clock; a peer's are its buckets moved to
    this clock (their starts, as floats)."""

    __slots__ = ("buckets", "requests", "tokens")

    def __init__(self) -> None:
        self.buckets: deque[list[float]] = deque()
        self.requests = 0.0
        self.tokens = 0.0

    def expire(self, now: float) -> None:
        oldest = math.floor(now) - (WINDOW_S - 1)
        b = self.buckets
        while b and b[0][0] < oldest:
            _, r, t = b.popleft()
            self.requests -= r
            self.tokens -= t

    def add(self, bucket: float, requests: float, tokens: float) -> None:
        b = self.buckets
        if b and b[-1][0] == bucket:
            b[-1][1] += requests
            b[-1][2] += tokens
        else:
            b.append([bucket, requests, tokens])
        self.requests += requests
        self.tokens += tokens


def _retry_after(
    parts: Iterable[Usage], which: int, used: float, cost: float, limit: float, now: float
) -> float:
    """Seconds until enough buckets leave the window that `used - left + cost <= limit`."""
    buckets = sorted((b for u in parts for b in u.buckets), key=lambda b: b[0])
    freed = 0.0
    for b in buckets:
        freed += b[which]
        if used - freed + cost <= limit:
            return max(0.001, math.floor(b[0]) + WINDOW_S - now)
    return float(WINDOW_S)


class RateLimiter:
    """Admission's check: `admit(tenant, tokens, now)` counts the request or raises."""

    def __init__(self, config: RateLimitConfig) -> None:
        self.config = config
        self.own: dict[str, Usage] = {}
        # Peers' usage per replica and key, as last heard, on this clock.
        self.peers: dict[str, dict[str, Usage]] = {}
        self._changed: set[str] = set()
        # Replicas sharing the limits (itself included), as last heard; while the shared
        # store is unreachable each admits 1/share of every limit.
        self.share = 1
        self.on_change: Callable[[], None] = lambda: None
        # Requests refused, by (scope: "tenant" / "total", limit: "requests" / "tokens" /
        # "too_large"), for /metrics.
        self.refused: dict[tuple[str, str], int] = {}
        self._admitted = 0

    @staticmethod
    def tenant_of(user_id: str | None) -> str:
        return user_id if user_id and user_id != TOTAL else ANONYMOUS

    def admit(self, user_id: str | None, tokens: int, now: float) -> None:
        tenant = self.tenant_of(user_id)
        checks = [(tenant, self.config.limit_of(tenant)), (TOTAL, self.config.total)]
        for key, limit in checks:
            if limit is not None:
                self._check(key, limit, tokens, now)
        bucket = float(math.floor(now))
        for key, limit in checks:
            if limit is not None:
                self.own.setdefault(key, Usage()).add(bucket, 1.0, float(tokens))
                self._changed.add(key)
        self._admitted += 1
        if self._admitted % SWEEP_EVERY == 0:
            self.sweep(now)
        self.on_change()

    def sweep(self, now: float) -> None:
        """Forget tenants with nothing left in the window (a client inventing a new `user`
        per request must not grow this without bound: at most the tenants of one window)."""
        for by_key in (self.own, *self.peers.values()):
            for u in by_key.values():
                u.expire(now)
            for key in [k for k, u in by_key.items() if not u.buckets]:
                del by_key[key]
        for replica in [r for r, by_key in self.peers.items() if not by_key]:
            del self.peers[replica]

    def _check(self, key: str, limit: RateLimit, tokens: int, now: float) -> None:
        parts = list(self._usages(key, now))
        for which, what, cap, cost in (
            (1, "requests", limit.requests_per_minute, 1),
            (2, "tokens", limit.tokens_per_minute, tokens),
        ):
            if cap is None:
                continue
            allowed = cap / self.share
            scope = "total" if key == TOTAL else "tenant"
            if which == 2 and cost > allowed:
                self._refuse(scope, "too_large")
                raise RequestExceedsRateLimitError(key, tokens, int(allowed))
            used = sum(u.requests if which == 1 else u.tokens for u in parts)
            if used + cost > allowed:
                self._refuse(scope, what)
                wait = _retry_after(parts, which, used, cost, allowed, now)
                raise RateLimitedError(key, what, int(allowed), wait)

    def _refuse(self, scope: str, limit: str) -> None:
        self.refused[(scope, limit)] = self.refused.get((scope, limit), 0) + 1

    def _usages(self, key: str, now: float) -> Iterable[Usage]:
        u = self.own.get(key)
        if u is not None:
            u.expire(now)
            yield u
        for by_key in self.peers.values():
            p = by_key.get(key)
            if p is not None:
                p.expire(now)
                yield p

    def usage(self, user_id: str | None, now: float) -> tuple[float, float]:
        """(requests, tokens) a tenant has used in the window, its own and peers' ("*" as
        `user_id`: the total's usage; None: the `anonymous` tenant's)."""
        key = TOTAL if user_id == TOTAL else self.tenant_of(user_id)
        parts = list(self._usages(key, now))
        return sum(u.requests for u in parts), sum(u.tokens for u in parts)

    # -- sharing (fleetshare) ---------------------------------------------------------------
    def take_changed(self) -> list[str]:
        """The keys whose own usage changed since the last call (what a message carries)."""
        keys = list(self._changed)
        self._changed.clear()
        return keys

    def export(self, now: float, keys: Iterable[str] | None = None) -> dict[str, Any] | None:
        """This replica's own usage of `keys` (default: every key) as ages (seconds since
        each bucket started, so peers need not share a clock); None when there is none."""
        out: dict[str, list[list[float]]] = {}
        for key in self.own if keys is None else keys:
            u = self.own.get(key)
            if u is None:
                continue
            u.expire(now)
            out[key] = [[round(now - b, 3), r, t] for b, r, t in u.buckets]
        return {"usage": out} if out else None

    def learn(self, replica: str, payload: dict[str, Any], now: float, age_s: float = 0.0) -> None:
        """A peer's usage (`export`'s payload) heard `age_s` seconds after it was exported:
        each key's buckets replace what was known of that peer's key."""
        usage = payload.get("usage")
        if not isinstance(usage, dict):
            return
        mine = self.peers.setdefault(replica, {})
        for key, buckets in usage.items():
            u = Usage()
            for entry in buckets if isinstance(buckets, list) else []:
                try:
                    age, r, t = float(entry[0]), float(entry[1]), float(entry[2])
                except (TypeError, ValueError, IndexError):
                    continue
                u.add(now - age - age_s, r, t)
            mine[str(key)] = u
