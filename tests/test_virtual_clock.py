"""The virtual-clock loop: timers fire in order at their virtual deadlines, idle time is free."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sage_cp_plugin.sim import SimInstanceConfig, create_app
from sage_cp_plugin.virtual import StreamingASGITransport, VirtualClockEventLoop, run_virtual


def test_sleep_jumps_the_clock_without_waiting() -> None:
    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockEventLoop)
        t0 = loop.time()
        await asyncio.sleep(3600)
        return t0, loop.time(), loop.skipped_s

    t0, t1, skipped = run_virtual(main())
    assert t1 - t0 == pytest.approx(3600)
    assert skipped == pytest.approx(3600)  # the hour was jumped over, not waited for


def test_timers_fire_in_deadline_order_and_wait_for_times_out() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, float]] = []
        for name, delay in (("c", 3.0), ("a", 1.0), ("b", 2.0)):
            loop.call_later(delay, lambda n=name: seen.append((n, loop.time())))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.create_future(), timeout=5.0)
        seen.append(("timeout", loop.time()))
        return seen

    assert run_virtual(main()) == [("a", 1.0), ("b", 2.0), ("c", 3.0), ("timeout", 5.0)]


def test_loop_counts_jumps_and_can_be_advanced_by_hand() -> None:
    loop = VirtualClockEventLoop(start=10.0)
    try:
        loop.run_until_complete(asyncio.sleep(2.5))
        assert loop.time() == pytest.approx(12.5)
        assert loop.jumps >= 1 and loop.skipped_s == pytest.approx(2.5)
        loop.advance(1.0)
        assert loop.time() == pytest.approx(13.5)
        with pytest.raises(ValueError):
            loop.advance(-1)
    finally:
        loop.close()


def test_streaming_transport_delivers_chunks_at_engine_times() -> None:
    """Chunks arrive one engine step apart (httpx.ASGITransport would deliver them all at the end)."""
    cfg = SimInstanceConfig(b0_ms=10.0, b1_us_per_token=0.0, b2_us_per_seq=0.0)

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        transport = StreamingASGITransport(create_app(cfg))
        body = {"prompt": "a b c", "max_tokens": 5, "stream": True}
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            t0 = loop.time()
            times = []
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if line.startswith("data:") and "[DONE]" not in line:
                        times.append(loop.time() - t0)
        return times

    times = run_virtual(main())
    assert times == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05], abs=1e-9)


def test_killed_transport_refuses_and_resets() -> None:
    cfg = SimInstanceConfig(b0_ms=10.0)

    async def main() -> None:
        transport = StreamingASGITransport(create_app(cfg))
        body = {"prompt": "a b c", "max_tokens": 50, "stream": True}
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                lines = resp.aiter_lines()
                await anext(lines)
                transport.kill()
                with pytest.raises(httpx.RemoteProtocolError):
                    async for _ in lines:
                        pass
            with pytest.raises(httpx.ConnectError):
                await client.get("/health")
            transport.revive()
            assert (await client.get("/health")).status_code == 200

    run_virtual(main())


class _StandardHeapLoop(VirtualClockEventLoop):
    """The same virtual loop on the standard library's heap of `TimerHandle`s."""

    call_at = asyncio.BaseEventLoop.call_at  # type: ignore[assignment]
    _run_once = asyncio.BaseEventLoop._run_once  # type: ignore[attr-defined]

    def next_timer_when(self) -> float | None:
        scheduled = self._scheduled  # type: ignore[attr-defined]
        return scheduled[0].when() if scheduled else None  # type: ignore[no-any-return]


def test_timers_run_in_the_standard_loops_order_ties_and_cancels_included() -> None:
    """The loop's heap of (when, handle) pairs must order callbacks exactly as asyncio's heap
    of handles does, same-instant timers included (the stdlib does not run ties first-in,
    first-out): replays depend on it to reproduce main's numbers."""
    import random

    def scenario(loop_factory: type[VirtualClockEventLoop]) -> list[tuple[int, float]]:
        async def main() -> list[tuple[int, float]]:
            loop = asyncio.get_running_loop()
            rng = random.Random(7)
            order: list[tuple[int, float]] = []
            handles: list[asyncio.TimerHandle] = []

            def fire(i: int) -> None:
                order.append((i, loop.time()))
                if i % 3 == 0 and i < 3000:  # timers that schedule timers, some at "now"
                    handles.append(
                        loop.call_at(loop.time() + rng.choice([0.0, 0.5, 1.0]), fire, i + 5000)
                    )

            for i in range(3000):
                handles.append(loop.call_at(float(rng.randrange(40)) / 4, fire, i))  # many ties
            for h in rng.sample(handles, 1200):  # enough to trigger the heap's clean-up
                h.cancel()
            await asyncio.sleep(30)
            return order

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())

    ours, standard = scenario(VirtualClockEventLoop), scenario(_StandardHeapLoop)
    assert len(ours) > 1500
    assert ours == standard


def test_a_failing_callback_is_reported_as_the_standard_loop_reports_it() -> None:
    """The loop runs callbacks itself (`Handle._run` inlined): a callback that raises must
    still reach the loop's exception handler with the standard message, exception and
    handle, and the loop must go on with the next callback."""

    def scenario(loop_factory: type[asyncio.AbstractEventLoop]) -> tuple[str, str, bool, list[int]]:
        async def main() -> tuple[str, str, bool, list[int]]:
            loop = asyncio.get_running_loop()
            seen: list[dict[str, object]] = []
            loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
            ran: list[int] = []

            def boom() -> None:
                raise ValueError("boom")

            handle = loop.call_soon(boom)
            loop.call_soon(ran.append, 1)
            loop.call_later(0.5, ran.append, 2)
            await asyncio.sleep(1)
            ctx = seen[0]
            return str(ctx["message"]), repr(ctx["exception"]), ctx["handle"] is handle, ran

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main())

    ours = scenario(VirtualClockEventLoop)
    assert ours == scenario(asyncio.SelectorEventLoop)
    assert ours[0].startswith("Exception in callback ") and ours[1] == "ValueError('boom')"
    assert ours[2:] == (True, [1, 2])
