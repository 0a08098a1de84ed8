"""Quotas per tenant: tokens and cost over a calendar period (hour, day or month, UTC).

Rate limits (rate_limits.py) bound how fast a tenant sends; a quota bounds how much it uses
in a period, as LiteLLM's budgets and OpenAI's usage limits do. A tenant is the request's
`user_id` (`anonymous` without one); `tenants` names a tenant's quota, `default` is every
other tenant's, each on its own.

What a request uses is charged when it completes: its real prompt and completion tokens (the
engine's usage; the admission estimates when the engine reported none) and its cost
(`RequestResult.cost`, at the instances' prices). A request is refused at admission once its
tenant's usage has reached the quota (`QuotaExceededError`: HTTP 429 `insufficient_quota`,
OpenAI's code, with Retry-After the seconds until the period ends); requests already
admitted finish, so a tenant may end a period above its quota by what it had in flight.

Replicas sharing state (`fleetshare`) send their own totals of the period as they change, and
keep them in the store until the period ends, so a replica started mid-period (or after all
restarted) counts what the others used; a single process keeps them in memory only.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sage_cp_plugin.errors import RetryLaterError
from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.rate_limits import RateLimiter, counted_tokens
from sage_cp_plugin.types import RequestResult, RequestStatus

Period = Literal["hour", "day", "month"]


class Quota(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: int | None = Field(None, gt=0)
    cost: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _some_quota(self) -> Quota:
        if self.tokens is None and self.cost is None:
            raise ValueError("a quota needs tokens or cost")
        return self


class QuotaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    period: Period = "day"
    default: Quota | None = None
    tenants: dict[str, Quota] = Field(default_factory=dict)

    def quota_of(self, tenant: str) -> Quota | None:
        return self.tenants.get(tenant, self.default)


def period_of(period: Period, wall: float) -> tuple[str, float]:
    """The period containing `wall` (seconds since the epoch): its id and when it ends."""
    t = dt.datetime.fromtimestamp(wall, dt.UTC)
    if period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + dt.timedelta(hours=1)
        return start.strftime("%Y-%m-%dT%H"), end.timestamp()
    if period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), (start + dt.timedelta(days=1)).timestamp()
    days = calendar.monthrange(t.year, t.month)[1]
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.strftime("%Y-%m"), (start + dt.timedelta(days=days)).timestamp()


class QuotaExceededError(RetryLaterError):
    code = "insufficient_quota"  # OpenAI's

    def __init__(self, tenant: str, what: str, used: float, quota: float, retry_after_s: float):
        self.tenant, self.retry_after_s = tenant, retry_after_s
        super().__init__(
            f"quota exceeded: tenant {tenant} used {used:g} of its {quota:g} {what} for this "
            f"period; it renews in {retry_after_s:.0f}s"
        )


class QuotaLedger:
    """Usage per tenant in the current period: this replica's own and its peers' totals."""

    def __init__(self, config: QuotaConfig, wall_clock: Callable[[], float]) -> None:
        self.config = config
        self.wall_clock = wall_clock
        self.period, self.ends_at = period_of(config.period, wall_clock())
        self.own: dict[str, list[float]] = {}  # tenant -> [tokens, cost]
        self.peers: dict[str, dict[str, list[float]]] = {}  # replica -> tenant -> [...]
        # Tenants whose totals changed since the last message (a message carries only
        # those: with many tenants a message of all of them would grow without bound).
        self.changed: set[str] = set()
        self.on_change: Callable[[], None] = lambda: None

    def _roll(self) -> None:
        wall = self.wall_clock()
        if wall >= self.ends_at:
            self.period, self.ends_at = period_of(self.config.period, wall)
            self.own.clear()
            self.peers.clear()

    def used(self, user_id: str | None) -> tuple[float, float]:
        """(tokens, cost) the tenant used in this period, here and on every peer."""
        self._roll()
        tenant = RateLimiter.tenant_of(user_id)
        tokens = cost = 0.0
        for by_tenant in (self.own, *self.peers.values()):
            u = by_tenant.get(tenant)
            if u is not None:
                tokens += u[0]
                cost += u[1]
        return tokens, cost

    def check(self, user_id: str | None) -> None:
        tenant = RateLimiter.tenant_of(user_id)
        quota = self.config.quota_of(tenant)
        if quota is None:
            return
        tokens, cost = self.used(user_id)
        for what, used, cap in (("tokens", tokens, quota.tokens), ("cost", cost, quota.cost)):
            if cap is not None and used >= cap:
                wait = max(1.0, self.ends_at - self.wall_clock())
                raise QuotaExceededError(tenant, what, used, cap, wait)

    def charge(self, user_id: str | None, tokens: int, cost: float | None) -> None:
        tenant = RateLimiter.tenant_of(user_id)
        if self.config.quota_of(tenant) is None:
            return
        self._roll()
        u = self.own.setdefault(tenant, [0.0, 0.0])
        u[0] += tokens
        u[1] += cost or 0.0
        self.changed.add(tenant)
        self.on_change()

    # -- sharing (fleetshare) ---------------------------------------------------------------
    def export(self, tenants: set[str] | None = None) -> dict[str, Any]:
        """This replica's totals of the period, of `tenants` (default: all)."""
        self._roll()
        own = self.own if tenants is None else {t: self.own[t] for t in tenants if t in self.own}
        return {"period": self.period, "ends_at": self.ends_at, "totals": own}

    def learn(self, replica: str, payload: Any) -> None:
        """A peer's totals (`export`'s payload: all of its tenants, or those that changed);
        ignored when of another period."""
        self._roll()
        if not isinstance(payload, dict) or payload.get("period") != self.period:
            return
        totals = payload.get("totals")
        if not isinstance(totals, dict):
            return
        mine = self.peers.setdefault(replica, {})
        for tenant, v in totals.items():
            try:
                mine[str(tenant)] = [float(v[0]), float(v[1])]
            except (TypeError, ValueError, IndexError):
                continue


def charge_quota(ledger: QuotaLedger) -> Callable[[QueuedRequest, RequestResult], None]:
    """A result observer charging each completed request to its tenant's quota: the
    engine's token counts (the admission estimates when it reported none) and its cost."""

    def observe(item: QueuedRequest, result: RequestResult) -> None:
        if result.state != RequestStatus.COMPLETED:
            return
        tokens = result.prompt_tokens + result.completion_tokens
        ledger.charge(item.request.user_id, tokens or counted_tokens(item), result.cost)

    return observe
