"""Garbage collection in a serving process: start-up objects are frozen once it serves.

Why: CPython's cyclic collector stops the event loop for every object it scans, and a
full (generation 2) collection scans every tracked object of the process. Most of a
gateway's ~85,000 tracked objects are made at start-up (modules, classes, pydantic
validators, route tables, metric families, the embedded fleet) and live as long as the
process; they are never garbage, yet each full collection walks them all. A full
collection is due once the objects promoted since the last one exceed a quarter of the
long-lived ones, which is what 1,000 connections opened at once do (~30 tracked objects
each): measured in the gateway during that burst (a probe in its loop, gc callbacks), one
full collection over ~115,000 objects stopped the loop for 82 ms of CPU, the largest stall of
the burst (docs/hardening.md, "Accept burst").

`gc.freeze()` moves every tracked object to a permanent generation that collections skip,
so a collection costs in proportion to the objects made since start-up (connections,
requests in flight), not to the program's size; and the threshold of the next full
collection then follows the live objects made since, too. A cycle among frozen objects
that later becomes garbage is never collected; objects freed by reference counting (nearly
all) are freed as before. One `gc.collect()` first, so garbage of the start-up itself is
not frozen with the rest.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect once, then exclude every object tracked now from later collections; returns
    how many were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("froze %d start-up objects out of garbage collection", frozen)
    return frozen
