"""Batch embeddings: documents -> EmbeddingMap over batches of texts -> vectors in memory.

    python examples/pipelines/batch_embeddings.py [--config fleet.yaml]

Each stream item is a list of 32 texts: one `/v1/embeddings` request embeds them all.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sage.foundation import SinkFunction
from sage.runtime import LocalEnvironment
from sage_cp_plugin.operators import EmbeddingMap, ResultRecord, use_control_plane

DOCS = [f"Document {i}: notes about topic {i % 7}." for i in range(256)]


class CollectVectors(SinkFunction):  # type: ignore[misc]
    def __init__(self, into: list[list[float]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.into = into

    def execute(self, record: ResultRecord) -> None:
        if not record.ok or record.body is None:
            raise RuntimeError(f"embedding failed: {record.error}")
        self.into.extend(d["embedding"] for d in record.body["data"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default=None)
    p.add_argument("--time-scale", type=float, default=None)
    args = p.parse_args(argv)
    config: Any = args.config
    if config is None and args.time_scale is not None:
        config = {"embedded_fleet": {"time_scale": args.time_scale}}

    vectors: list[list[float]] = []
    chunks = [DOCS[i : i + 32] for i in range(0, len(DOCS), 32)]
    env = LocalEnvironment("batch-embeddings")
    use_control_plane(env, config)
    env.from_batch(chunks).map(EmbeddingMap, model="sim-embed").sink(CollectVectors, into=vectors)
    env.submit(autostop=True)
    print(f"{len(vectors)} vectors of dimension {len(vectors[0])}")
    return {"vectors": len(vectors), "dimension": len(vectors[0])}


if __name__ == "__main__":
    main(sys.argv[1:])
