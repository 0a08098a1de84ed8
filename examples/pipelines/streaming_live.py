"""A streaming pipeline fed by a live source: requests arrive on a queue while the job runs.

    python examples/pipelines/streaming_live.py [--seconds 3]

A producer thread stands for a live feed (a message bus, a socket). The source emits a
`Heartbeat` when idle, so the in-flight window hands out finished answers even in a lull;
`env.stop()` ends the streaming job and, through `use_control_plane`, closes the service.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from typing import Any

from sage.foundation import SinkFunction, SourceFunction
from sage.runtime import LocalEnvironment
from sage_cp_plugin.operators import (
    ConcurrentFlatMap,
    Heartbeat,
    ResultRecord,
    use_control_plane,
)


class QueueSource(SourceFunction):  # type: ignore[misc]
    """Items from a `queue.Queue`; a `Heartbeat` every `idle_s` without one."""

    def __init__(self, feed: queue.Queue[Any], idle_s: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.feed = feed
        self.idle_s = idle_s

    def execute(self, *args: Any) -> Any:
        try:
            return self.feed.get(timeout=self.idle_s)
        except queue.Empty:
            return Heartbeat()


class PrintAnswers(SinkFunction):  # type: ignore[misc]
    def __init__(self, into: list[ResultRecord], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.into = into

    def execute(self, data: Any) -> None:
        if isinstance(data, ResultRecord):
            self.into.append(data)
            print(f"{data.custom_id}: {data.output!r} ({data.timings.e2e_ms:.0f} ms)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="how long the feed runs")
    p.add_argument("--time-scale", type=float, default=None)
    args = p.parse_args(argv)
    config = (
        None if args.time_scale is None else {"embedded_fleet": {"time_scale": args.time_scale}}
    )

    feed: queue.Queue[Any] = queue.Queue()
    answers: list[ResultRecord] = []
    env = LocalEnvironment("streaming-live")
    use_control_plane(env, config)
    (
        env.from_source(QueueSource, feed=feed)
        .flatmap(ConcurrentFlatMap, kind="chat", defaults={"max_tokens": 12}, max_in_flight=16)
        .sink(PrintAnswers, into=answers)
    )
    env.submit(autostop=False)  # returns at once; the source runs on its own thread

    sent = 0
    stop_at = time.monotonic() + args.seconds
    while time.monotonic() < stop_at:  # the live feed
        feed.put({"custom_id": f"live-{sent}", "prompt": f"event {sent} happened"})
        sent += 1
        time.sleep(0.02)
    deadline = time.monotonic() + 30
    while len(answers) < sent and time.monotonic() < deadline:
        time.sleep(0.05)  # heartbeats flush the last answers
    env.stop()
    alive = [t.name for t in threading.enumerate() if t.name == "sage-cp-service"]
    print(f"sent {sent}, answered {len(answers)}, service threads left: {len(alive)}")
    return {"sent": sent, "answered": len(answers), "service_threads": len(alive)}


if __name__ == "__main__":
    main(sys.argv[1:])
