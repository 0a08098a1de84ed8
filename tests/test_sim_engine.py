"""The simulated engine on its own: batching, prefix cache, preemption, PD transfer, config."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from sage_cp_plugin.errors import ConfigurationError
from sage_cp_plugin.sim import (
    PRESETS,
    FaultConfig,
    KVCache,
    PromptTooLongError,
    SimEngine,
    SimInstanceConfig,
    get_preset,
)
from sage_cp_plugin.sim import tokens as tok
from sage_cp_plugin.sim.sequence import RemotePrefill
from sage_cp_plugin.virtual.clock import run_virtual
from tests.helpers import wait_until


def words(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


async def test_continuous_batching_runs_requests_together() -> None:
    eng = SimEngine(SimInstanceConfig(time_scale=0.001))
    seqs = [eng.submit(words(f"r{j}-", 20), 20) for j in range(32)]
    await asyncio.gather(*(s.done for s in seqs))
    batched = eng.counters.steps
    # Serially each request needs >= 20 steps; batched, all 32 share those steps.
    assert eng.counters.max_batch_seqs == 32
    assert eng.counters.steps <= 25 < 32 * 20
    assert all(s.num_output == 20 for s in seqs)
    # One request alone needs nearly as many steps as all 32 together.
    await eng.submit(words("alone", 20), 20).done
    alone = eng.counters.steps - batched
    assert alone >= 20 and batched < 32 * alone / 4
    await eng.stop()


def test_step_time_follows_the_formula() -> None:
    # On the virtual clock, so the step's duration is the formula's and not the machine's load.
    cfg = SimInstanceConfig(time_scale=1.0, b0_ms=10.0, b1_us_per_token=1000.0, b2_us_per_seq=0.0)

    async def one_prefill_step() -> float:
        eng = SimEngine(cfg)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await eng.submit(words("p", 10), 1).done  # one prefill step: 10 ms + 10 * 1 ms
        took = loop.time() - t0
        await eng.stop()
        return took

    assert run_virtual(one_prefill_step()) == pytest.approx(0.020, abs=1e-6)


async def test_prefix_cache_hits_for_a_repeated_prompt() -> None:
    eng = SimEngine(SimInstanceConfig(time_scale=0))
    prompt = words("shared", 200)
    await eng.submit(prompt, 4).done
    assert eng.counters.prefix_cache_hits == 0
    await eng.submit(prompt, 4).done
    # 200 tokens = 12 full blocks of 16; the last token is always recomputed.
    assert eng.counters.prefix_cache_hits == 192
    assert eng.counters.prefix_cache_queries == 400
    # A prompt sharing only the first 100 words hits the 6 full blocks they fill.
    await eng.submit([*prompt[:100], *words("other", 50)], 4).done
    assert eng.counters.prefix_cache_hits == 192 + 96
    await eng.stop()


async def test_chunked_prefill_splits_long_prompts() -> None:
    eng = SimEngine(SimInstanceConfig(time_scale=0, max_num_batched_tokens=64))
    await eng.submit(words("long", 300), 2).done
    # 300 prompt tokens at 64 per step = 5 steps, then 1 decode step for the 2nd token.
    assert eng.counters.steps == 6
    await eng.stop()


async def test_preemption_when_kv_is_exhausted() -> None:
    eng = SimEngine(SimInstanceConfig(time_scale=0, num_kv_blocks=8))  # 128 tokens in all
    seqs = [eng.submit(words(f"q{j}-", 30), 30) for j in range(4)]
    await asyncio.gather(*(s.done for s in seqs))
    assert eng.counters.preemptions > 0
    assert [s.num_output for s in seqs] == [30] * 4
    # Outputs are unaffected by recomputation.
    assert seqs[0].output == tok.generate(0, words("q0-", 30), 30)
    assert eng.kv.num_used == 0
    # Each request's prompt is counted once for the cache statistics, however often it was
    # preempted and re-admitted (its own recomputed blocks are no cache hits)...
    assert eng.counters.prefix_cache_queries == 4 * 30
    assert eng.counters.prefix_cache_hits == 0
    await eng.stop()


async def test_prefix_queries_count_each_request_once_despite_preemption() -> None:
    # Preempted victims re-hit their own blocks; vLLM counts those re-lookups apart
    # (preempted_queries), so the exported hit rate stays a per-request figure.
    eng = SimEngine(SimInstanceConfig(time_scale=0, num_kv_blocks=8))
    seqs = [eng.submit(words(f"q{j}-", 40), 30) for j in range(4)]
    await asyncio.gather(*(s.done for s in seqs))
    c = eng.counters
    assert c.preemptions > 0 and c.preempted_prefix_queries > 0
    assert c.prefix_cache_queries == 4 * 40  # each prompt looked up once, at first admission
    assert c.prefix_cache_hits <= c.prefix_cache_queries
    await eng.stop()


async def test_lru_eviction_keeps_recent_prefixes() -> None:
    kv = KVCache(num_blocks=4, block_size=2)
    a, b = kv.allocate(2), kv.allocate(2)
    assert a is not None and b is not None
    for blk, h in zip([*a, *b], [1, 2, 3, 4], strict=True):
        kv.register(blk, h)
    kv.free(a)
    kv.free(b)  # b freed last: most recent
    assert kv.allocate(2) is not None  # evicts a's blocks first
    assert kv.match_prefix([1]) == []
    assert kv.match_prefix([3, 4]) == b


async def test_abort_frees_blocks_and_ends_stream() -> None:
    eng = SimEngine(SimInstanceConfig(time_scale=0.01))
    seq = eng.submit(words("x", 64), 1000, stream=True)
    got = []
    async for w in seq.stream():
        got.append(w)
        if len(got) == 3:
            eng.abort(seq)
    assert 3 <= len(got) < 1000 and seq.finish_reason == "abort"
    assert eng.kv.num_used == 0 and not eng.scheduler.running
    await eng.stop()


async def test_pd_transfer_skips_prefill_compute_and_releases_producer() -> None:
    prefill = SimEngine(SimInstanceConfig(role="prefill", time_scale=0))
    decode = SimEngine(SimInstanceConfig(role="decode", time_scale=0))
    prompt = words("pd", 200)
    p = prefill.submit(prompt, 1, pin_for_remote_decode=True, request_id="r1")
    await p.done
    assert "r1" in prefill.pinned and prefill.kv.num_used == 13
    d = decode.submit(prompt, 8, remote=RemotePrefill(prefill.engine_id, "r1", 200))
    await d.done
    assert d.num_output == 8
    c = decode.counters
    assert (c.kv_transfers, c.external_prompt_tokens, c.prompt_tokens_computed) == (1, 200, 0)
    assert prefill.pinned == {} and prefill.kv.num_used == 0
    assert prefill.counters.pinned_released_by_fetch == 1
    await prefill.stop()
    await decode.stop()


async def test_unfetched_pd_kv_is_freed_after_the_pin_timeout() -> None:
    prefill = SimEngine(SimInstanceConfig(role="prefill", time_scale=0, kv_pin_timeout_s=0.05))
    await prefill.submit(words("z", 40), 1, pin_for_remote_decode=True).done
    assert prefill.kv.num_used == 3
    await wait_until(lambda: prefill.kv.num_used == 0, "the pin timeout to free the KV")
    assert prefill.counters.pinned_expired == 1
    await prefill.stop()


async def test_prompt_longer_than_max_model_len_is_rejected() -> None:
    eng = SimEngine(SimInstanceConfig(time_scale=0, max_model_len=32))
    with pytest.raises(PromptTooLongError, match="maximum context length is 32"):
        eng.submit(words("w", 30), 5)
    await eng.stop()


def test_config_errors_name_field_and_value() -> None:
    with pytest.raises(ValidationError) as exc:
        SimInstanceConfig(max_num_seqs=0)
    assert "max_num_seqs" in str(exc.value) and "input_value=0" in str(exc.value)
    with pytest.raises(ValidationError, match=r"preset='h200'.*known presets: .*zero"):
        SimInstanceConfig(preset="h200")
    with pytest.raises(ValidationError, match="error_rate"):
        FaultConfig(error_rate=1.5)
    with pytest.raises(ValidationError, match="role"):
        SimInstanceConfig(role="router")  # type: ignore[arg-type]


def test_presets_fill_unset_coefficients() -> None:
    cfg = SimInstanceConfig(preset="llama-3.3-70b-h100-tp4", b0_ms=1.0)
    assert (cfg.b0_ms, cfg.b1_us_per_token, cfg.b2_us_per_seq) == (1.0, 76.4, 66.8)
    a100 = get_preset("llama-3.1-8b-a100-tp1")
    assert (a100.b0_ms, a100.b1_us_per_token, a100.b2_us_per_seq) == (16.4, 47.8, 18.2)
    # Derived TP degrees: per-token cost falls, fixed cost rises, KV capacity grows.
    tp1, tp2 = PRESETS["llama-3.1-8b-h100-tp1"], PRESETS["llama-3.1-8b-h100-tp2"]
    assert tp2.b1_us_per_token < tp1.b1_us_per_token and tp2.b0_ms > tp1.b0_ms
    assert tp2.num_kv_blocks > tp1.num_kv_blocks
    with pytest.raises(ConfigurationError, match="known presets"):
        get_preset("nope")


async def test_a_prompt_as_text_or_as_words_is_the_same_prompt() -> None:
    """A plain text stays text inside the engine (no string per word); it must still be the
    prompt its words are: same output and count, and each form hits the blocks the others
    stored, the block that spans prompt and output included."""
    eng = SimEngine(SimInstanceConfig(time_scale=0))
    ws = words("w", 200)
    a = eng.submit(" ".join(ws), 20)
    await a.done
    assert a.prompt_text is not None  # plain: kept as text
    b = eng.submit("  " + "\t".join(ws) + "\n", 20)  # irregular whitespace: split into words
    await b.done
    assert b.prompt_text is None
    c = eng.submit(ws, 20)
    await c.done
    assert a.output == b.output == c.output
    assert a.prompt_len == b.prompt_len == c.prompt_len == 200
    assert eng.counters.prefix_cache_hits == 2 * 192  # 12 full blocks each
    # Prompt and answer again: 220 tokens; 13 blocks were computed (the 13th holds prompt
    # words 192-199 and output words 0-7) and all 13 are found.
    d = eng.submit(" ".join(ws + a.output), 1)
    await d.done
    assert eng.counters.prefix_cache_hits == 2 * 192 + 13 * 16
    await eng.stop()


def test_tokenizer_rule() -> None:
    assert tok.tokenize("a  b\nc") == ["a", "b", "c"]
    chat = tok.chat_prompt([("system", "be brief"), ("user", "hi there")])
    assert chat == ["<|system|>", "be", "brief", "<|user|>", "hi", "there", "<|assistant|>"]
    assert tok.generate(1, ["x"], 5) == tok.generate(1, ["x"], 5)
    assert tok.generate(1, ["x"], 5) != tok.generate(2, ["x"], 5)


# ------------------------------------------------------------------ fast-forward of decode runs


async def _ff_trace(fast_forward: bool) -> dict[str, object]:
    """A mix of non-streaming requests, later arrivals, a streaming one and an abort."""
    from sage_cp_plugin.virtual.clock import VirtualClockEventLoop

    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualClockEventLoop)
    cfg = SimInstanceConfig(num_kv_blocks=64, block_size=16, seed=3)
    eng = SimEngine(cfg)
    eng.fast_forward = fast_forward
    t0 = loop.time()
    finish: dict[str, float] = {}
    stream_times: list[float] = []

    async def plain(name: str, delay: float, plen: int, out: int) -> None:
        await asyncio.sleep(delay)
        seq = eng.submit(words(name, plen), out, request_id=name)
        await seq.done
        finish[name] = loop.time() - t0

    async def streamed(delay: float) -> None:
        await asyncio.sleep(delay)
        seq = eng.submit(words("s", 30), 12, stream=True, request_id="s")
        async for _ in seq.stream():
            stream_times.append(loop.time() - t0)
        finish["s"] = loop.time() - t0

    async def aborted() -> None:
        await asyncio.sleep(0.013)
        seq = eng.submit(words("x", 20), 200, request_id="x")
        await asyncio.sleep(0.2)
        eng.abort(seq)

    metrics_mid: list[bytes] = []

    async def scrape() -> None:
        for _ in range(40):  # reads between arrivals see the steps already completed
            await asyncio.sleep(0.0123)
            metrics_mid.append(eng.render_metrics())

    await asyncio.gather(
        plain("a", 0.0, 40, 90),
        plain("b", 0.0, 17, 60),
        plain("c", 0.05, 300, 40),  # arrives mid-run: cuts it at the step in progress
        plain("d", 0.31, 5, 70),
        streamed(0.077),
        aborted(),
        scrape(),
    )

    def no_wall_clock(text: bytes) -> list[bytes]:
        return [ln for ln in text.splitlines() if b"_created" not in ln]

    out = {
        "finish": finish,
        "stream": stream_times,
        "counters": eng.state()["counters"],
        "metrics": no_wall_clock(eng.render_metrics()),
        "metrics_mid": [no_wall_clock(m) for m in metrics_mid],
    }
    await eng.stop()
    return out


def test_fast_forward_is_exact() -> None:
    from sage_cp_plugin.virtual.clock import run_virtual

    slow = run_virtual(_ff_trace(False))
    fast = run_virtual(_ff_trace(True))
    assert fast["finish"] == slow["finish"]  # same virtual times, to the last bit
    assert fast["stream"] == slow["stream"] and len(slow["stream"]) == 12
    assert fast["counters"] == slow["counters"]
    assert fast["metrics"] == slow["metrics"]
    assert fast["metrics_mid"] == slow["metrics_mid"]


def test_fast_forward_skips_wakeups() -> None:
    from sage_cp_plugin.virtual.clock import VirtualClockEventLoop, run_virtual

    async def main(fast_forward: bool) -> tuple[int, float, int]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockEventLoop)
        eng = SimEngine(SimInstanceConfig(seed=1))
        eng.fast_forward = fast_forward
        seqs = [eng.submit(words(f"r{j}", 10), 100) for j in range(4)]
        await asyncio.gather(*(s.done for s in seqs))
        await eng.stop()
        return loop.jumps, loop.time(), eng.counters.steps

    jumps_slow, t_slow, steps_slow = run_virtual(main(False))
    jumps_fast, t_fast, steps_fast = run_virtual(main(True))
    assert (t_fast, steps_fast) == (t_slow, steps_slow) == (t_slow, 100)
    assert jumps_fast < jumps_slow / 5  # one wake-up per KV block, not per token


async def _evicting_run(
    fast_forward: bool, num_kv_blocks: int, again_at: float, again_len: int
) -> dict[str, object]:
    """Long decodes on a small cache: the new KV blocks they take evict cached blocks of an
    earlier prompt (or, fuller still, preempt), and a request for that prompt arrives in the
    middle, so its prefix hit depends on which blocks went, in which order."""
    from sage_cp_plugin.virtual.clock import VirtualClockEventLoop

    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualClockEventLoop)
    eng = SimEngine(SimInstanceConfig(num_kv_blocks=num_kv_blocks, block_size=16, seed=5))
    eng.fast_forward = fast_forward
    t0 = loop.time()
    finish: dict[str, float] = {}

    async def plain(name: str, prompt: list[str], delay: float, out: int) -> None:
        await asyncio.sleep(delay)
        seq = eng.submit(prompt, out, request_id=name)
        await seq.done
        finish[name] = loop.time() - t0

    await plain("p", words("shared", 200), 0.0, 2)  # 12 full blocks, cached once it ends
    await asyncio.gather(
        plain("a", words("a", 40), 0.0, 150),  # 150 tokens: 9 new blocks each
        plain("b", words("b", 40), 0.0, 150),
        plain("again", words("shared", again_len), again_at, 5),
    )
    out = {"finish": finish, "counters": eng.state()["counters"], "jumps": loop.jumps}
    await eng.stop()
    return out


@pytest.mark.parametrize(
    ("blocks", "at", "length", "hits", "preemptions"),
    [
        (28, 0.3, 100, 96, 0),  # nothing of the shared head evicted yet
        (26, 0.5, 200, 32, 0),  # all but its first two blocks evicted by the decodes
        (24, 0.5, 100, 96, 1),  # so full that stepping preempts: the run stops before
    ],
)
def test_fast_forward_runs_through_full_kv_blocks_exactly(
    blocks: int, at: float, length: int, hits: int, preemptions: int
) -> None:
    slow = run_virtual(_evicting_run(False, blocks, at, length))
    fast = run_virtual(_evicting_run(True, blocks, at, length))
    assert fast["finish"] == slow["finish"]
    assert fast["counters"] == slow["counters"]  # the same blocks evicted, in the same order
    counters = slow["counters"]
    assert isinstance(counters, dict)
    assert (counters["prefix_cache_hits"], counters["preemptions"]) == (hits, preemptions)


def test_fast_forward_wakes_once_per_run_not_per_kv_block() -> None:
    slow = run_virtual(_evicting_run(False, 28, 0.3, 100))
    fast = run_virtual(_evicting_run(True, 28, 0.3, 100))
    assert isinstance(fast["jumps"], int) and isinstance(slow["jumps"], int)
    assert slow["jumps"] > 150  # one per token
    assert fast["jumps"] < 12  # a few runs, each through the 9 blocks its decodes fill
