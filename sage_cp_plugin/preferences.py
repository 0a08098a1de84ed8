"""What a request asks of its instance beyond model and kind: `preferred_instance_id` and
`parallelism_hint`. Both narrow the candidates with a free slot when some match, and
never make a request wait: with no match it is routed as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

from sage_cp_plugin.pending import QueuedRequest
from sage_cp_plugin.state import InstanceState
from sage_cp_plugin.types import ExecutionInstance, ParallelismType


def layout_of(instance: ExecutionInstance) -> ParallelismType:
    """The parallelism an instance uses: the one dimension above 1, HYBRID for several,
    TENSOR_PARALLEL for a single GPU (the document's default)."""
    used = [
        t
        for t, n in (
            (ParallelismType.TENSOR_PARALLEL, instance.tensor_parallel_size),
            (ParallelismType.PIPELINE_PARALLEL, instance.pipeline_parallel_size),
            (ParallelismType.DATA_PARALLEL, instance.data_parallel_size),
            (ParallelismType.EXPERT_PARALLEL, instance.expert_parallel_size),
        )
        if n > 1
    ]
    if len(used) > 1:
        return ParallelismType.HYBRID
    return used[0] if used else ParallelismType.TENSOR_PARALLEL


def matches_hint(instance: ExecutionInstance, hint: ParallelismType) -> bool:
    if hint == ParallelismType.HYBRID:
        return layout_of(instance) == ParallelismType.HYBRID
    size = {
        ParallelismType.TENSOR_PARALLEL: instance.tensor_parallel_size,
        ParallelismType.PIPELINE_PARALLEL: instance.pipeline_parallel_size,
        ParallelismType.DATA_PARALLEL: instance.data_parallel_size,
        ParallelismType.EXPERT_PARALLEL: instance.expert_parallel_size,
    }[hint]
    return size > 1


def narrow(item: QueuedRequest, free: Sequence[InstanceState]) -> Sequence[InstanceState]:
    """The preferred instance alone when it is among `free` (healthy, eligible, with a
    slot); else the instances matching the parallelism hint, when any; else `free`."""
    req = item.request
    if req.preferred_instance_id is not None:
        for s in free:
            if s.instance_id == req.preferred_instance_id:
                return [s]
    if req.parallelism_hint is not None:
        hint = req.parallelism_hint
        matching = [s for s in free if matches_hint(s.instance, hint)]
        if matching:
            return matching
    return free
