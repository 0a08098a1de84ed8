"""Rate limits per tenant and in total (requests and tokens per minute): what a tenant over
its limit gets (429 with a Retry-After that is right), what never counts against it, and the
limits holding across replicas that share state (in-memory store on the virtual clock here;
through a real Redis in test_fleetshare_redis.py)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sage_cp_plugin import quotas
from sage_cp_plugin.errors import QueueFullError
from sage_cp_plugin.fleetshare.store import InMemoryFleetStateStore
from sage_cp_plugin.fleetshare.sync import FleetShare
from sage_cp_plugin.manager import ControlPlaneManager
from sage_cp_plugin.rate_limits import (
    RateLimit,
    RateLimitedError,
    RequestExceedsRateLimitError,
)
from sage_cp_plugin.types import ExecutionInstance, RequestMetadata, RequestResult, RequestStatus
from sage_cp_plugin.virtual.clock import run_virtual
from tests.test_gateway_support import gateway_over_sim


def limited_manager(**rate_limits: object) -> ControlPlaneManager:
    """One instance (never started: requests are admitted and stay queued)."""
    m = ControlPlaneManager(scheduling_policy="fifo", rate_limits=rate_limits)
    m.register_instance(
        ExecutionInstance(
            instance_id="a", host="127.0.0.1", port=9, model_name="m", max_concurrent_requests=4
        )
    )
    return m


def req(user: str | None = "acme", prompt: str = "hello", max_tokens: int = 10) -> RequestMetadata:
    return RequestMetadata(prompt=prompt, max_tokens=max_tokens, user_id=user)


async def _tenant_over_its_limit() -> None:
    m = limited_manager(
        default={"requests_per_minute": 3},
        tenants={"big": {"requests_per_minute": 5}},
        total={"requests_per_minute": 7},
    )
    loop = asyncio.get_running_loop()
    for _ in range(3):
        await m.submit_request(req("acme"))
        await asyncio.sleep(1.0)
    with pytest.raises(RateLimitedError) as refused:
        await m.submit_request(req("acme"))
    refused_at = loop.time()
    # Another tenant has its own limit (the default, each tenant on its own) ...
    await m.submit_request(req("other"))
    # ... a named tenant its own number ...
    for _ in range(3):
        await m.submit_request(req("big"))
    # ... and all together stop at the total, whoever asks.
    with pytest.raises(RateLimitedError, match="total"):
        await m.submit_request(req("big"))
    # Retry-After is when the oldest request leaves the minute: not earlier, not later.
    wait = refused.value.retry_after_s
    assert 56.0 < wait <= 57.0
    await asyncio.sleep(refused_at + wait - 0.01 - loop.time())
    with pytest.raises(RateLimitedError):
        await m.submit_request(req("acme"))
    await asyncio.sleep(0.02)
    await m.submit_request(req("acme"))


def test_a_tenant_over_its_limit_gets_a_retry_after_that_is_right() -> None:
    run_virtual(_tenant_over_its_limit())


async def _tokens() -> None:
    m = limited_manager(default={"tokens_per_minute": 100})
    await m.submit_request(req(max_tokens=60))  # ~2 prompt tokens + 60
    with pytest.raises(RateLimitedError, match="tokens"):
        await m.submit_request(req(max_tokens=60))
    await m.submit_request(req(max_tokens=20))
    # A request that could never fit in a minute is a client error, not "retry later".
    with pytest.raises(RequestExceedsRateLimitError, match="can never be admitted"):
        await m.submit_request(req("newcomer", max_tokens=200))


def test_tokens_count_prompt_and_max_tokens_at_admission() -> None:
    run_virtual(_tokens())


async def _refused_requests_do_not_count() -> None:
    m = limited_manager(default={"requests_per_minute": 2})
    with pytest.raises(Exception, match="no instance serves model"):
        await m.submit_request(RequestMetadata(prompt="x", model_name="nope", user_id="acme"))
    m.queue.capacity = 0  # the queue is full: refused before the limit counts it
    with pytest.raises(QueueFullError):
        await m.submit_request(req())
    m.queue.capacity = 100
    await m.submit_request(req())
    await m.submit_request(req())
    with pytest.raises(RateLimitedError):
        await m.submit_request(req())


def test_requests_refused_for_other_reasons_do_not_use_the_limit() -> None:
    run_virtual(_refused_requests_do_not_count())


async def spread(managers: list[ControlPlaneManager], n: int) -> int:
    """A client spreading `n` requests over the replicas in turn, 20 ms apart: admitted."""
    admitted = 0
    for k in range(n):
        try:
            await managers[k % len(managers)].submit_request(req())
            admitted += 1
        except RateLimitedError:
            pass
        await asyncio.sleep(0.02)
    return admitted


async def _replicas_share(delay_s: float) -> tuple[int, int, int]:
    store = InMemoryFleetStateStore(delivery_delay_s=delay_s)
    limits = {"default": {"requests_per_minute": 20}}
    managers = [limited_manager(**limits) for _ in range(3)]
    shares = [FleetShare(m, store, f"r{i}") for i, m in enumerate(managers)]
    for s in shares:
        await s.start()
    admitted = await spread(managers, 60)
    # A replica started now reads its peers' usage from the store: it refuses at once.
    late = limited_manager(**limits)
    late_share = FleetShare(late, store, "r-late")
    await late_share.start()
    late_admitted = 0
    for _ in range(5):
        try:
            await late.submit_request(req())
            late_admitted += 1
        except RateLimitedError:
            pass
    # With the store unreachable, each replica admits only its share of the limit.
    other = "other-tenant"
    store.up = False
    await asyncio.sleep(1.5)  # every replica notices (its next heartbeat or admin check fails)
    alone = 0
    for _ in range(20):
        try:
            await managers[0].submit_request(req(other))
            alone += 1
        except RateLimitedError:
            pass
    store.up = True
    for s in (*shares, late_share):
        await s.stop()
    return admitted, late_admitted, alone


def test_replicas_sharing_state_hold_one_limit_together() -> None:
    admitted, late_admitted, alone = run_virtual(_replicas_share(0.0005))
    assert admitted == 20  # one limit over three replicas, not three
    assert late_admitted == 0
    assert alone == 5  # 20 / 4 replicas it had heard (three peers and itself)


def test_replicas_sharing_nothing_would_each_admit_the_limit() -> None:
    """The control: without the shared usage each replica counts only its own requests."""

    async def blind() -> int:
        managers = [limited_manager(default={"requests_per_minute": 20}) for _ in range(3)]
        return await spread(managers, 60)

    assert run_virtual(blind()) == 60


async def test_gateway_answers_429_with_retry_after_and_an_openai_error() -> None:
    limits = {"default": {"requests_per_minute": 2}}
    async with gateway_over_sim(rate_limits=limits) as h:
        async with httpx.AsyncClient(base_url=h.url, timeout=30) as c:
            body = {"model": "sim-model", "prompt": "hi", "max_tokens": 2, "user": "acme"}
            for _ in range(2):
                assert (await c.post("/v1/completions", json=body)).status_code == 200
            r = await c.post("/v1/completions", json=body)
            assert r.status_code == 429, r.text
            assert 1 <= int(r.headers.get("retry-after", -1)) <= 60, r.text
            err = r.json()["error"]
            assert err["code"] == "rate_limit_exceeded" and "acme" in err["message"]
            # Another user is not affected; a streamed request counts the same way.
            other = {**body, "user": "other", "stream": True}
            assert (await c.post("/v1/completions", json=other)).status_code == 200
            assert (await c.post("/v1/completions", json=other)).status_code == 200
            assert (await c.post("/v1/completions", json=other)).status_code == 429
            big = {**body, "user": "third", "max_tokens": 10}
            limiter = h.gateway.manager.admission.rate_limiter
            assert limiter is not None
            limiter.config.tenants["third"] = RateLimit(tokens_per_minute=5)
            r = await c.post("/v1/completions", json=big)
            assert r.status_code == 400
            assert r.json()["error"]["param"] == "max_tokens"
            text = (await c.get("/metrics")).text
            assert 'sage_cp_rate_limited_total{limit="requests",scope="tenant"} 2.0' in text
            assert 'sage_cp_rate_limited_total{limit="too_large",scope="tenant"} 1.0' in text


async def _embeddings_split() -> None:
    m = ControlPlaneManager(
        scheduling_policy="fifo", rate_limits={"default": {"requests_per_minute": 2}}
    )
    m.register_instance(
        ExecutionInstance(
            instance_id="e", host="127.0.0.1", port=9, model_name="emb",
            instance_type="embedding", max_concurrent_requests=4,
        )
    )  # fmt: skip
    # A list split into 5 parts is one request against the limit, not five.
    task = asyncio.ensure_future(m.embed([f"text {i}" for i in range(10)], batch_size=2,
                                         model_name="emb", user_id="acme"))  # fmt: skip
    await asyncio.sleep(0.01)
    assert len(m.queue) == 5
    await m.submit_request(RequestMetadata(input="one", model_name="emb", user_id="acme"))
    with pytest.raises(RateLimitedError):
        await m.submit_request(RequestMetadata(input="two", model_name="emb", user_id="acme"))
    task.cancel()


def test_an_embeddings_list_split_into_parts_counts_as_one_request() -> None:
    run_virtual(_embeddings_split())


class WallClock:
    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


async def _quota() -> None:
    m = ControlPlaneManager(
        scheduling_policy="fifo", quotas={"period": "day", "default": {"tokens": 100}}
    )
    ledger = m.admission.quotas
    assert ledger is not None
    wall = WallClock(1_800_000_000.0)  # 2027-01-15 08:00 UTC
    ledger.wall_clock = wall
    ledger.period, ledger.ends_at = quotas.period_of("day", wall())
    m.register_instance(
        ExecutionInstance(instance_id="a", host="127.0.0.1", port=9, model_name="m")
    )
    item = m.admission.admit(req("acme", max_tokens=10))
    # Charged when it completes, with the engine's counts.
    result = RequestResult(request_id=item.request_id, state=RequestStatus.COMPLETED,
                           prompt_tokens=70, completion_tokens=40)  # fmt: skip
    m.results.store(item, result)
    assert ledger.used("acme") == (110.0, 0.0)
    with pytest.raises(quotas.QuotaExceededError) as refused:
        await m.submit_request(req("acme"))
    assert refused.value.retry_after_s == pytest.approx(16 * 3600)  # until midnight UTC
    await m.submit_request(req("other"))  # each tenant its own quota
    wall.t += 16 * 3600  # the next day
    await m.submit_request(req("acme"))


def test_a_tenant_over_its_quota_is_refused_until_the_period_renews() -> None:
    run_virtual(_quota())


async def _quota_shared() -> tuple[bool, bool, bool]:
    store = InMemoryFleetStateStore(delivery_delay_s=0.0005)
    config = {"period": "month", "default": {"cost": 1.0}}

    def replica() -> ControlPlaneManager:
        m = ControlPlaneManager(scheduling_policy="fifo", quotas=config)
        m.register_instance(
            ExecutionInstance(instance_id="a", host="127.0.0.1", port=9, model_name="m")
        )
        return m

    m0, m1 = replica(), replica()
    s0, s1 = FleetShare(m0, store, "r0"), FleetShare(m1, store, "r1")
    await s0.start()
    await s1.start()
    item = m0.admission.admit(req("acme"))
    m0.results.store(item, RequestResult(request_id=item.request_id, cost=1.5,
                                         state=RequestStatus.COMPLETED, prompt_tokens=3))  # fmt: skip
    await asyncio.sleep(0.1)

    async def refuses(m: ControlPlaneManager) -> bool:
        try:
            await m.submit_request(req("acme"))
        except quotas.QuotaExceededError:
            return True
        return False

    peer = await refuses(m1)  # heard replica 0's spend
    # Every replica restarted (new ids): the spend is still in the store for the month.
    await s0.stop()
    await s1.stop()
    m2 = replica()
    s2 = FleetShare(m2, store, "r2")
    await s2.start()
    restarted = await refuses(m2)
    other_ok = not await refuses(replica())  # the control: a replica sharing nothing
    await s2.stop()
    return peer, restarted, other_ok


def test_quota_usage_is_shared_by_replicas_and_outlives_them_for_the_period() -> None:
    assert run_virtual(_quota_shared()) == (True, True, True)


async def test_gateway_answers_insufficient_quota_once_a_tenant_used_its_quota() -> None:
    async with gateway_over_sim(quotas={"period": "hour", "default": {"tokens": 30}}) as h:
        async with httpx.AsyncClient(base_url=h.url, timeout=30) as c:
            body = {"model": "sim-model", "prompt": "hi there", "max_tokens": 20, "user": "acme"}
            first = await c.post("/v1/completions", json=body)
            assert first.status_code == 200
            used = first.json()["usage"]
            assert used["prompt_tokens"] + used["completion_tokens"] < 30
            assert (await c.post("/v1/completions", json=body)).status_code == 200
            r = await c.post("/v1/completions", json=body)  # the two used more than 30
            assert r.status_code == 429
            assert r.json()["error"]["code"] == "insufficient_quota"
            assert 1 <= int(r.headers["retry-after"]) <= 3600


async def _many_users() -> int:
    m = limited_manager(default={"requests_per_minute": 5})
    limiter = m.admission.rate_limiter
    assert limiter is not None
    for k in range(3000):  # a client inventing a new user per request, 10 per second
        await m.submit_request(req(f"user-{k}"))
        await asyncio.sleep(0.1)
    return len(limiter.own)


def test_tenants_gone_quiet_are_forgotten() -> None:
    # At most the users of the last minute plus one sweep interval, not all 3,000.
    assert run_virtual(_many_users()) <= 600 + 1024
