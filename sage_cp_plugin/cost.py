"""What a request costs at the instances' prices.

Token-priced instances (`price_per_1k_tokens`, or `prices_by_tier[billing_tier]`) charge
the tokens an attempt processed. GPU-hour-priced ones charge `price_per_gpu_hour` x
`gpu_count` x the attempt's share of the instance's time: while n requests are in flight
each is charged 1/n of the elapsed time, so the shares of all requests add up to the time
the instance was busy (`GpuTimeMeter`, O(1) per start and end).
"""

from __future__ import annotations

from sage_cp_plugin.types import ExecutionInstance


def price(
    instance: ExecutionInstance, *, tokens: int, gpu_seconds: float, tier: str
) -> float | None:
    """Cost of `tokens` or `gpu_seconds` of one request here; None when unpriced."""
    per_1k = instance.price_per_1k_for(tier)
    if per_1k is not None:
        return per_1k * tokens / 1000.0
    if instance.price_per_gpu_hour is not None:
        return instance.price_per_gpu_hour * instance.gpu_count * gpu_seconds / 3600.0
    return None


class GpuTimeMeter:
    """Per instance, the integral over time of 1 / (requests in flight) while busy.

    Call `mark` just before an instance's in-flight count changes; the share of a request
    is the integral's growth between its start and end marks.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._integral: dict[str, float] = {}

    def mark(self, iid: str, in_flight: int, now: float) -> float:
        """The integral for instance `iid` at `now`; `in_flight` is its count until now."""
        total = self._integral.get(iid, 0.0)
        last = self._last.get(iid)
        if last is not None and in_flight > 0:
            total += (now - last) / in_flight
            self._integral[iid] = total
        self._last[iid] = now
        return total

    def forget(self, instance_id: str) -> None:
        self._last.pop(instance_id, None)
        self._integral.pop(instance_id, None)
