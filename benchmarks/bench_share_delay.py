"""How long a booking made on one replica takes to reach a peer's view, through a real Redis.

Two coordinators on one host, each with its own `FleetShare` to one `redis-server` (started
here on a free loopback port). Replica r0 books a request on an instance as its dispatcher
does (in-flight count up, then the dispatch hook that wakes the publisher); measured: wall
time until r1's view of that instance counts it (`peer_in_flight`, stamped where r1 applies
the message, no polling). Two orders of the publisher's Redis calls, alternated round by
round in one run:
- `publish_first` (the code): the message to the peers, then the SET of the load record;
- `set_first` (before): the SET (a round trip), then the message.
This delay is what bench_replicas' `--delays-ms` stands for: while a booking is on its way,
a peer places requests without it. Wall-clock, and both replicas share one event loop here:
re-run on a quiet machine for numbers to quote.

usage: python -m benchmarks.bench_share_delay [--rounds 400] [--instances 8]
Writes benchmarks/results/share_delay.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_admin_propagation import start_redis
from sage_cp_plugin import ControlPlaneManager
from sage_cp_plugin.fleetshare.peers import own_load
from sage_cp_plugin.fleetshare.redis_store import RedisFleetStateStore
from sage_cp_plugin.fleetshare.sync import FleetShare
from sage_cp_plugin.types import ExecutionInstance
from sage_cp_plugin.virtual.provenance import provenance

OUT = Path(__file__).parent / "results"
ORDERS = ("publish_first", "set_first")


class SetFirstShare(FleetShare):
    """The publisher as it was: the load record's SET, then the message."""

    async def _send_load(self, force: bool = False) -> None:
        now = self.manager.now()
        load = own_load(self.manager.fleet, now)
        await self.store.put_load(self.replica_id, load, self.load_ttl_s)
        await self.store.publish({"kind": "load", "replica": self.replica_id, "load": load})
        self._last_sent, self._last_sent_at = load, now
        self.prefix.take_outbox()


def _manager(instances: int) -> ControlPlaneManager:
    m = ControlPlaneManager(scheduling_policy="fifo")
    for k in range(instances):  # never contacted: only the shared view is measured
        m.register_instance(
            ExecutionInstance(instance_id=f"i{k}", host="127.0.0.1", port=9, model_name="m")
        )
    return m


async def measure(url: str, rounds: int, instances: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {o: [] for o in ORDERS}
    pairs = []
    for order in ORDERS:
        cls = FleetShare if order == "publish_first" else SetFirstShare
        a, b = _manager(instances), _manager(instances)
        sa = cls(a, RedisFleetStateStore(url, namespace=order), f"{order}-a")
        sb = FleetShare(b, RedisFleetStateStore(url, namespace=order), f"{order}-b")
        await sa.start()
        await sb.start()
        pairs.append((order, a, b, sa, sb))
    arrived: dict[str, float] = {}
    for order, _a, _b, _sa, sb in pairs:
        apply = sb.peers.apply

        def stamped(fleet: Any, apply: Any = apply, order: str = order) -> None:
            apply(fleet)
            arrived[order] = time.perf_counter()

        sb.peers.apply = stamped  # type: ignore[method-assign]
    await asyncio.sleep(0.3)  # both subscriptions live
    try:
        for k in range(rounds):
            for order, a, b, sa, _sb in pairs if k % 2 else pairs[::-1]:
                st = a.fleet.states[f"i{k % instances}"]
                peer = b.fleet.states[st.instance_id]
                want = peer.peer_in_flight + 1
                t0 = time.perf_counter()
                st.in_flight += 1  # the dispatcher's booking
                sa.prefix.on_change()  # and its hook: the publisher wakes
                while peer.peer_in_flight != want:
                    await asyncio.sleep(0)
                    if time.perf_counter() - t0 > 5:
                        raise RuntimeError(f"{order}: booking not seen by the peer in 5 s")
                out[order].append((arrived[order] - t0) * 1000)
                await asyncio.sleep(0.005)
    finally:
        for _o, _a, _b, sa, sb in pairs:
            await sa.stop()
            await sb.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--instances", type=int, default=8)
    args = ap.parse_args()
    if args.rounds < 1 or args.instances < 1:
        ap.error("--rounds and --instances must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(tmp)
        try:
            res = asyncio.run(measure(url, args.rounds, args.instances))
        finally:
            proc.kill()
            proc.wait()
    stats = {
        o: {f"p{q}_ms": float(np.percentile(v, q)) for q in (50, 90, 99)} | {"n": len(v)}
        for o, v in res.items()
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "share_delay.json").write_text(
        json.dumps(
            {"provenance": provenance(), "args": vars(args), "stats": stats, "samples_ms": res},
            indent=1,
        )
    )
    lines = ["| publisher order | n | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|"]
    for o, s in stats.items():
        lines.append(
            f"| {o} | {s['n']} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} |"
        )
    p = provenance()
    table = "\n".join(lines) + "\n"
    (OUT / "share_delay.md").write_text(
        "# Booking on one replica -> in a peer's view, real redis-server on loopback\n\n"
        f"{__doc__.split('usage:')[0]}\n{args.rounds} rounds, {args.instances} instances; "
        f"commit {p['commit'][:7]}, load average {p['loadavg_1m']:.1f} at the end.\n\n" + table
    )
    print(table)


if __name__ == "__main__":
    main()
