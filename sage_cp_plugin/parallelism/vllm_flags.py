"""Turn a pool into `vllm serve` command lines and control-plane instance definitions.

Flags are vLLM's (0.32): ``--tensor-parallel-size``, ``--pipeline-parallel-size``,
``--data-parallel-size``, ``--enable-expert-parallel``; disaggregated pools add
``--kv-transfer-config`` with the NixlConnector and the role (kv_producer for prefill,
kv_consumer for decode), as docs/architecture.md §6 runs it.
"""

from __future__ import annotations

import json

from sage_cp_plugin.parallelism.layout import Pool, Role
from sage_cp_plugin.types import ExecutionInstance, ExecutionInstanceType

_KV_ROLE = {Role.PREFILL: "kv_producer", Role.DECODE: "kv_consumer"}
_INSTANCE_TYPE = {
    Role.GENERAL: ExecutionInstanceType.GENERAL,
    Role.PREFILL: ExecutionInstanceType.PREFILLING,
    Role.DECODE: ExecutionInstanceType.DECODING,
}


def vllm_args(pool: Pool, *, max_num_seqs: int | None = None) -> list[str]:
    """Arguments after ``vllm serve MODEL`` for one instance of ``pool``."""
    s = pool.shape
    args = ["--tensor-parallel-size", str(s.tp), "--pipeline-parallel-size", str(s.pp)]
    if s.dp > 1:
        args += ["--data-parallel-size", str(s.dp)]
    if s.expert_parallel:
        args.append("--enable-expert-parallel")
    if max_num_seqs is not None:
        args += ["--max-num-seqs", str(max_num_seqs)]
    if pool.role in _KV_ROLE:
        cfg = {"kv_connector": "NixlConnector", "kv_role": _KV_ROLE[pool.role]}
        args += ["--kv-transfer-config", json.dumps(cfg, separators=(",", ":"))]
    return args


def vllm_command(model_name: str, pool: Pool, port: int, **kw: int | None) -> str:
    args = vllm_args(pool, **kw)
    quoted = [f"'{a}'" if a.startswith("{") else a for a in args]
    return " ".join(["vllm", "serve", model_name, *quoted, "--port", str(port)])


def execution_instances(
    model_name: str,
    pool: Pool,
    *,
    first_port: int,
    host: str = "localhost",
    gpu_memory_gb: float = 0.0,
    max_concurrent_requests: int = 256,
    id_prefix: str = "",
) -> list[ExecutionInstance]:
    """One ``ExecutionInstance`` per replica, ready for ``register_instance``."""
    s = pool.shape
    return [
        ExecutionInstance(
            instance_id=f"{id_prefix}{pool.role.value}-{i}",
            host=host,
            port=first_port + i,
            model_name=model_name,
            instance_type=_INSTANCE_TYPE[pool.role],
            tensor_parallel_size=s.tp,
            pipeline_parallel_size=s.pp,
            data_parallel_size=s.dp,
            expert_parallel_size=s.ep_size,
            gpu_count=s.gpus,
            gpu_memory_gb=gpu_memory_gb,
            max_concurrent_requests=max_concurrent_requests,
        )
        for i in range(pool.replicas)
    ]
