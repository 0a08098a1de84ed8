"""Collective-communication costs, alpha-beta model: time = latency + bytes / bandwidth.

Ring all-reduce moves 2 (n-1)/n of the message per GPU (Thakur et al., "Optimization of
collective communication operations in MPICH", 2005); all-to-all moves (n-1)/n; a pipeline
hand-off is one point-to-point send. A group that spans nodes runs at the inter-node NIC
bandwidth and latency, which is what makes cross-node TP expensive.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from sage_cp_plugin.parallelism.gpu_spec import GPUSpec
from sage_cp_plugin.parallelism.layout import spans_nodes

FloatLike = float | npt.NDArray[np.float64]


def _link(gpu: GPUSpec, group_gpus: int) -> tuple[float, float]:
    """(latency s, bandwidth B/s) of the slowest link a group of this size uses."""
    if spans_nodes(group_gpus, gpu):
        return gpu.inter_node_latency_us * 1e-6, gpu.inter_node_bandwidth_gbps * 1e9
    return gpu.intra_node_latency_us * 1e-6, gpu.intra_node_bandwidth_gbps * 1e9


def all_reduce_s(gpu: GPUSpec, n: int, nbytes: FloatLike) -> FloatLike:
    if n <= 1:
        return 0.0 * nbytes
    alpha, bw = _link(gpu, n)
    return alpha + 2.0 * (n - 1) / n * nbytes / bw


def all_to_all_s(gpu: GPUSpec, n: int, nbytes: FloatLike) -> FloatLike:
    """``nbytes``: what one GPU sends in total before the (n-1)/n local share is removed."""
    if n <= 1:
        return 0.0 * nbytes
    alpha, bw = _link(gpu, n)
    return alpha + (n - 1) / n * nbytes / bw


def p2p_s(gpu: GPUSpec, cross_node: bool, nbytes: FloatLike) -> FloatLike:
    if cross_node:
        return gpu.inter_node_latency_us * 1e-6 + nbytes / (gpu.inter_node_bandwidth_gbps * 1e9)
    return gpu.intra_node_latency_us * 1e-6 + nbytes / (gpu.intra_node_bandwidth_gbps * 1e9)


def pipeline_boundaries_crossing_nodes(gpu: GPUSpec, stage_gpus: int, pp: int) -> int:
    """Of the pp-1 stage hand-offs, how many go between nodes (stages packed in order)."""
    if pp <= 1:
        return 0
    stages_per_node = max(1, gpu.gpus_per_node // stage_gpus)
    return (pp - 1) // stages_per_node if stage_gpus <= gpu.gpus_per_node else pp - 1


def kv_transfer_s(gpu: GPUSpec, nbytes: FloatLike, cross_node: bool, lanes: int) -> FloatLike:
    """Prefill -> decode KV hand-off (NIXL): every prefill GPU sends its shard in parallel,
    plus ~1 ms of request/metadata handshake through the side channel."""
    bw = gpu.inter_node_bandwidth_gbps if cross_node else gpu.intra_node_bandwidth_gbps
    return 1e-3 + nbytes / (bw * 1e9 * max(1, lanes))
