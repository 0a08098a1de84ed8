"""Spans around batches: a batch job (`sage-cp batch`) and a SAGE pipeline batch
(`ControlPlaneService.run_batch`). Requests started inside are their children.

A batch job's requests run on the service's own event loop thread (and SAGE may build
the service elsewhere), so the job's context travels as a W3C carrier (a dict, picklable).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sage_cp_plugin.tracing import state


@contextmanager
def span(name: str, attributes: dict[str, Any]) -> Iterator[dict[str, str] | None]:
    """A current INTERNAL span for the block; yields its W3C carrier (None when off)."""
    tracer = state.TRACER
    if tracer is None:
        yield None
        return
    from opentelemetry import propagate

    with tracer.start_as_current_span(name, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier


@contextmanager
def parent(carrier: dict[str, str] | None) -> Iterator[None]:
    """Run the block as a child of the span `carrier` came from (no-op when off/None)."""
    if carrier is None or state.TRACER is None:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        context.detach(token)
