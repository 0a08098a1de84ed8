from sage_cp_plugin import ControlPlaneManager, ExecutionInstance

# 最简配置
manager = ControlPlaneManager(
    scheduling_policy="fifo",
    enable_pd_separation=False
)

instance = ExecutionInstance(
    instance_id="vllm-1",
    host="localhost",
    port=8000,
    model_name="meta-llama/Llama-2-7b",
    tensor_parallel_size=1,
    gpu_count=1
)

manager.register_instance(instance)

# -- Not in the document: say what was configured. --
status = manager.get_status()
print(f"scheduling policy: {status['scheduling_policy']}; routing: {status['routing_strategy']}")
for iid, inst in status["instances"].items():
    print(f"registered {iid}: {inst['type']} at {inst['url']}, serving {', '.join(inst['models'])}")
