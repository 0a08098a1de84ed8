"""Accelerator facts for the roofline model, with presets from vendor data sheets.

Bandwidths are per GPU and per direction, in GB/s: NVLink 4 (H100/H200) 900 GB/s total =
450 per direction; NVLink 3 (A100) 600 total = 300; L40S has no NVLink (PCIe Gen4 x16, 32 per
direction). Inter-node: one 400 Gb/s NDR InfiniBand NIC per H100/H200 (50 GB/s), 200 Gb/s HDR
per A100 (25 GB/s), as in NVIDIA DGX/HGX reference designs. FLOP/s are dense (no sparsity).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sage_cp_plugin.parallelism.errors import UnknownPresetError


class GPUSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    memory_gb: float = Field(gt=0)
    hbm_bandwidth_gbps: float = Field(gt=0, description="HBM bandwidth, GB/s")
    dense_tflops: float = Field(gt=0, description="dense BF16 tensor TFLOP/s")
    fp8_tflops: float | None = Field(default=None, gt=0, description="dense FP8 TFLOP/s")
    gpus_per_node: int = Field(default=8, gt=0)
    intra_node_bandwidth_gbps: float = Field(gt=0, description="per GPU per direction, GB/s")
    inter_node_bandwidth_gbps: float = Field(gt=0, description="per GPU per direction, GB/s")
    # One collective's fixed cost. Small decode messages are latency-bound: vLLM's custom
    # all-reduce over NVLink takes ~5-10 us; NCCL over InfiniBand ~20-30 us (nccl-tests).
    intra_node_latency_us: float = Field(default=8.0, ge=0)
    inter_node_latency_us: float = Field(default=25.0, ge=0)

    def tflops_for(self, dtype_bytes: float) -> float:
        """Peak for the weight precision: FP8 kernels use FP8 tensor cores where present."""
        if dtype_bytes <= 1.0 and self.fp8_tflops is not None:
            return self.fp8_tflops
        return self.dense_tflops


GPU_PRESETS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        GPUSpec(
            name="A100-80G",
            memory_gb=80,
            hbm_bandwidth_gbps=2039,
            dense_tflops=312,
            intra_node_bandwidth_gbps=300,
            inter_node_bandwidth_gbps=25,
        ),
        GPUSpec(
            name="H100",
            memory_gb=80,
            hbm_bandwidth_gbps=3350,
            dense_tflops=989,
            fp8_tflops=1979,
            intra_node_bandwidth_gbps=450,
            inter_node_bandwidth_gbps=50,
        ),
        GPUSpec(
            name="H200",
            memory_gb=141,
            hbm_bandwidth_gbps=4800,
            dense_tflops=989,
            fp8_tflops=1979,
            intra_node_bandwidth_gbps=450,
            inter_node_bandwidth_gbps=50,
        ),
        GPUSpec(
            name="L40S",
            memory_gb=48,
            hbm_bandwidth_gbps=864,
            dense_tflops=362,
            fp8_tflops=733,
            intra_node_bandwidth_gbps=32,
            inter_node_bandwidth_gbps=25,
            intra_node_latency_us=15.0,
        ),
    )
}


def get_gpu_spec(name: str | GPUSpec) -> GPUSpec:
    """A preset by name (case-insensitive), or the spec itself."""
    if isinstance(name, GPUSpec):
        return name
    for key, spec in GPU_PRESETS.items():
        if key.lower() == name.strip().lower():
            return spec
    raise UnknownPresetError("GPU", name, GPU_PRESETS)
