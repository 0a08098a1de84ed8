import asyncio
from sage_cp_plugin import (
    ControlPlaneManager,
    ExecutionInstance,
    RequestMetadata,
    RequestPriority,
)


async def integrate_with_sage_app():
    """SAGE 应用集成示例"""

    # 1. 初始化 Control Plane
    manager = ControlPlaneManager(
        scheduling_policy="adaptive",
        routing_strategy="load_balanced",
        enable_pd_separation=True,
        enable_monitoring=True,
    )

    # 2. 注册 vLLM 实例
    # 注意: vLLM 实例需要预先启动并监听 HTTP 端口

    # Prefilling 优化实例
    prefilling_instance = ExecutionInstance(
        instance_id="prefill-1",
        host="localhost",  # 或远程 IP
        port=8000,
        model_name="meta-llama/Llama-2-7b",
        instance_type="prefilling",
        tensor_parallel_size=4,
        gpu_count=4,
    )
    manager.register_instance(prefilling_instance)

    # Decoding 优化实例
    decoding_instance = ExecutionInstance(
        instance_id="decode-1",
        host="localhost",
        port=8001,
        model_name="meta-llama/Llama-2-7b",
        instance_type="decoding",
        tensor_parallel_size=1,
        gpu_count=1,
    )
    manager.register_instance(decoding_instance)

    # 3. 启动 Control Plane
    await manager.start()

    # 4. 在 SAGE 应用中提交请求
    request = RequestMetadata(
        request_id="sage-req-001",
        user_id="user-123",
        priority=RequestPriority.HIGH,
        slo_deadline_ms=1000,
        max_tokens=512,
        prompt="用简单的语言解释量子计算。",
    )

    request_id = await manager.submit_request(request)

    # 5. 等待完成并获取结果
    while True:
        status = await manager.get_request_status(request_id)
        if status.state in ["completed", "failed"]:
            break
        await asyncio.sleep(0.1)

    # 6. 获取性能指标
    metrics = manager.get_metrics()
    print(f"Throughput: {metrics.requests_per_second:.2f} req/s")
    print(f"Latency: {metrics.avg_latency_ms:.2f} ms")

    # 7. 停止 Control Plane
    await manager.stop()

    return status


# 运行集成
asyncio.run(integrate_with_sage_app())
