"""A PD-disaggregated fleet: prefill on one instance, decode on another, behind one pipeline.

    python examples/pipelines/pd_fleet.py

Starts a simulated prefill instance and a simulated decode instance on loopback (swap in
your vLLM servers started with NixlConnector, docs/architecture.md §6), and configures the control
plane to run every chat request with vLLM's two-step protocol: the prefill instance
computes the KV cache (`max_tokens: 1`, `kv_transfer_params`), the decode one streams.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sage.foundation import SinkFunction
from sage.runtime import LocalEnvironment
from sage_cp_plugin.operators import ChatMap, ResultRecord, use_control_plane

from sage_cp_plugin.sim import SimFleetThread, SimInstanceConfig


class Collect(SinkFunction):  # type: ignore[misc]
    def __init__(self, into: list[ResultRecord], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.into = into

    def execute(self, record: ResultRecord) -> None:
        self.into.append(record)


def pd_config(prefill_port: int, decode_port: int) -> dict[str, Any]:
    return {
        "scheduling_policy": "fifo",
        "enable_pd_separation": True,
        "pd": {"disaggregated": True, "disaggregation_trigger": "always"},
        "instances": [
            {"instance_id": "prefill-0", "host": "127.0.0.1", "port": prefill_port,
             "model_name": "sim-model", "instance_type": "prefilling"},
            {"instance_id": "decode-0", "host": "127.0.0.1", "port": decode_port,
             "model_name": "sim-model", "instance_type": "decoding"},
        ],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--time-scale", type=float, default=0.1)
    args = p.parse_args(argv)
    fleet = SimFleetThread(
        [
            SimInstanceConfig(role="prefill", time_scale=args.time_scale, seed=0),
            SimInstanceConfig(role="decode", time_scale=args.time_scale, seed=1),
        ]
    )
    ports = [int(u.rsplit(":", 1)[1]) for u in fleet.start()]
    records: list[ResultRecord] = []
    try:
        env = LocalEnvironment("pd-fleet")
        use_control_plane(env, pd_config(*ports))
        prompts = [f"Summarise chapter {i} of a long novel in one line. " * 8 for i in range(12)]
        env.from_batch(prompts).map(ChatMap, defaults={"max_tokens": 16}).sink(
            Collect, into=records
        )
        env.submit(autostop=True)
    finally:
        fleet.stop()
    on = sorted({str(r.instance_id) for r in records})
    print(f"{sum(r.ok for r in records)}/{len(records)} answered; decoded on {on}")
    return {"ok": sum(r.ok for r in records), "total": len(records), "instances": on}


if __name__ == "__main__":
    main(sys.argv[1:])
