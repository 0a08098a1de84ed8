from sage_cp_plugin import ControlPlaneManager, ExecutionInstance

# 生产环境完整配置
manager = ControlPlaneManager(
    scheduling_policy="adaptive",
    routing_strategy="affinity",  # 用户亲和性，提高缓存命中率
    enable_pd_separation=True,
    enable_monitoring=True,
    enable_auto_scaling=False,  # True: see docs/elastic-fleet.md (autoscaling=...)
)

# 多个实例，不同并行策略
instances = [
    # TP=4 实例 (高吞吐 prefilling)
    ExecutionInstance(
        instance_id="vllm-tp4",
        host="192.168.1.100",
        port=8000,
        model_name="llama-3-70b",
        tensor_parallel_size=4,
        gpu_count=4,
        instance_type="prefilling",
    ),
    # TP=2, PP=2 混合并行 (大模型)
    ExecutionInstance(
        instance_id="vllm-hybrid",
        host="192.168.1.101",
        port=8000,
        model_name="llama-3-70b",
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
        gpu_count=4,
        instance_type="general",
    ),
    # DP=2 数据并行 (高并发 decoding)
    ExecutionInstance(
        instance_id="vllm-dp2",
        host="192.168.1.102",
        port=8000,
        model_name="llama-3-70b",
        data_parallel_size=2,
        tensor_parallel_size=2,
        gpu_count=4,
        instance_type="decoding",
    ),
]

for instance in instances:
    manager.register_instance(instance)

# -- Not in the document: say what was configured. --
status = manager.get_status()
print(f"scheduling policy: {status['scheduling_policy']}; routing: {status['routing_strategy']}")
for iid, inst in status["instances"].items():
    print(f"registered {iid}: {inst['type']} at {inst['url']}, serving {', '.join(inst['models'])}")
