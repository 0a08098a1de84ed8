"""Batch chat: questions -> RequestBatcher -> BatchFlatMap -> JSONL file + metrics.

    python examples/pipelines/batch_chat.py [--out chat.jsonl] [--config fleet.yaml]

Without --config it runs on the embedded simulated fleet. One service call carries a batch
of 16 requests, which the coordinator runs concurrently.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sage.runtime import LocalEnvironment
from sage_cp_plugin.operators import (
    BatchFlatMap,
    JsonlSink,
    MetricsSink,
    RequestBatcher,
    use_control_plane,
    with_end_marker,
)

QUESTIONS = [f"Give one fun fact about the number {i}." for i in range(64)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="chat_results.jsonl")
    p.add_argument("--config", default=None)
    p.add_argument("--time-scale", type=float, default=None, help="embedded fleet speed")
    args = p.parse_args(argv)
    config: Any = args.config
    if config is None and args.time_scale is not None:
        config = {"embedded_fleet": {"time_scale": args.time_scale}}

    summaries: list[dict[str, Any]] = []
    env = LocalEnvironment("batch-chat")
    use_control_plane(env, config)
    records = (
        env.from_batch(list(with_end_marker(QUESTIONS)))
        .flatmap(RequestBatcher, batch_size=16)
        .flatmap(BatchFlatMap, kind="chat", model="sim-model", defaults={"max_tokens": 32})
    )
    records.sink(JsonlSink, path=args.out)
    records.sink(MetricsSink, on_summary=summaries.append)
    env.submit(autostop=True)
    return summaries[0]


if __name__ == "__main__":
    main(sys.argv[1:])
