"""A loop probe put into a gateway process by benchmarks/bench_slow_ab.py (this directory on
PYTHONPATH, `SAGE_CP_LOOP_PROBE=<file>` in its environment), so that every variant, old
code included, is measured the same way without a line of it in the product.

A task sleeps 2 ms at a time and records each wake-up later than 1 ms past due: when (the
monotonic clock, shared by the processes of one machine), how late, and the CPU seconds
the loop's thread spent in that wait. The CPU figure is the gateway's own work in one
stretch; the rest of the lateness is the machine's other processes holding the cores, so
the CPU figure can be compared across runs at different loads and the lateness cannot. Every
garbage collection is recorded too (start, wall and thread CPU seconds, generation). All
is written as JSON when `serve` returns (SIGTERM).
"""

from __future__ import annotations

import os

if os.environ.get("SAGE_CP_LOOP_PROBE"):
    import asyncio
    import gc
    import json
    import time
    from typing import Any

    from sage_cp_plugin.entrypoints.gateway import server as _server

    _serve = _server.serve
    _late: list[tuple[float, float, float]] = []
    _gcs: list[tuple[float, float, float, int]] = []
    _start: list[float] = [0.0, 0.0]

    def _on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _start[:] = [time.monotonic(), time.thread_time()]
        else:
            wall, cpu = time.monotonic() - _start[0], time.thread_time() - _start[1]
            _gcs.append((_start[0], wall, cpu, int(info["generation"])))

    async def _probe() -> None:
        while True:
            t, c = time.monotonic(), time.thread_time()
            await asyncio.sleep(0.002)
            late = time.monotonic() - t - 0.002
            if late > 0.001:
                _late.append((t, late, time.thread_time() - c))

    def _write() -> None:  # at exit: nothing else runs on the loop any more
        with open(os.environ["SAGE_CP_LOOP_PROBE"], "w") as f:
            json.dump({"late": _late, "gc": _gcs}, f)

    async def serve(*args: Any, **kwargs: Any) -> None:
        gc.callbacks.append(_on_gc)
        task = asyncio.get_running_loop().create_task(_probe())
        try:
            await _serve(*args, **kwargs)
        finally:
            task.cancel()
            _write()

    _server.serve = serve  # type: ignore[assignment]
