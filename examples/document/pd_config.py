from sage_cp_plugin import (
    ControlPlaneManager,
    ExecutionInstance,
    ExecutionInstanceType,
    PDSeparationConfig,
    PrefillingConfig,
    DecodingConfig,
)

# 启用 PD 分离
pd_config = PDSeparationConfig(
    enabled=True,
    routing_policy="adaptive",
    prefilling_threshold_input_tokens=2048,  # 超过 2048 tokens 视为 prefilling
)

manager = ControlPlaneManager(
    scheduling_policy="adaptive",
    enable_pd_separation=True,
    pd_config=pd_config,
)

# Prefilling 优化实例
prefilling_instance = ExecutionInstance(
    instance_id="prefilling-1",
    host="localhost",
    port=8000,
    model_name="meta-llama/Llama-2-70b",
    instance_type=ExecutionInstanceType.PREFILLING,
    tensor_parallel_size=8,  # 高 TP 以提高吞吐
    gpu_count=8,
    prefilling_config=PrefillingConfig(
        target_batch_size=64,
        tensor_parallel_size=8,
        enable_chunked_prefill=True,
    ),
)

# Decoding 优化实例
decoding_instance = ExecutionInstance(
    instance_id="decoding-1",
    host="localhost",
    port=8001,
    model_name="meta-llama/Llama-2-70b",
    instance_type=ExecutionInstanceType.DECODING,
    tensor_parallel_size=2,  # 低 TP 以降低延迟
    gpu_count=2,
    decoding_config=DecodingConfig(
        target_latency_ms=50,
        max_parallel_requests=200,
    ),
)

manager.register_instance(prefilling_instance)
manager.register_instance(decoding_instance)

# -- Not in the document: say what was configured. --
status = manager.get_status()
print(f"scheduling policy: {status['scheduling_policy']}; routing: {status['routing_strategy']}")
for iid, inst in status["instances"].items():
    print(f"registered {iid}: {inst['type']} at {inst['url']}, serving {', '.join(inst['models'])}")
