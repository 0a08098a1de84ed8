"""A third-party scheduling policy, found through its entry point, in a SAGE pipeline.

    pip install tests/fixtures/example_plugin     # the example plugin package
    python examples/pipelines/policy_plugin.py

`sage_cp_example_plugin` registers the policy `shortest_prompt_first` in the entry-point
group `sage_cp` (see its pyproject.toml and `@hookimpl`s). Naming it in the configuration is
all a pipeline needs; `sage-cp plugins` lists it with its distribution.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sage.foundation import SinkFunction
from sage.runtime import LocalEnvironment
from sage_cp_plugin.operators import (
    BatchFlatMap,
    RequestBatcher,
    ResultRecord,
    use_control_plane,
    with_end_marker,
)

from sage_cp_plugin.plugins import get_registry

POLICY = "shortest_prompt_first"


class Collect(SinkFunction):  # type: ignore[misc]
    def __init__(self, into: list[ResultRecord], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.into = into

    def execute(self, record: Any) -> None:
        if isinstance(record, ResultRecord):
            self.into.append(record)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--time-scale", type=float, default=0.05)
    args = p.parse_args(argv)
    names = get_registry().names("policy")
    if POLICY not in names:
        raise SystemExit(
            f"policy {POLICY!r} is not installed; run: pip install tests/fixtures/example_plugin"
        )
    config = {
        "scheduling_policy": POLICY,
        "embedded_fleet": {"time_scale": args.time_scale, "generation_instances": 1},
    }
    prompts = [("word " * (10 * (i % 5 + 1))) + f"#{i}" for i in range(40)]
    records: list[ResultRecord] = []
    env = LocalEnvironment("policy-plugin")
    use_control_plane(env, config)
    (
        env.from_batch(list(with_end_marker(prompts)))
        .flatmap(RequestBatcher, batch_size=40)
        .flatmap(BatchFlatMap, kind="completion", defaults={"max_tokens": 8})
        .sink(Collect, into=records)
    )
    env.submit(autostop=True)
    print(f"policy {POLICY}: {sum(r.ok for r in records)}/{len(records)} answered")
    return {"policy": POLICY, "ok": sum(r.ok for r in records), "total": len(records)}


if __name__ == "__main__":
    main(sys.argv[1:])
