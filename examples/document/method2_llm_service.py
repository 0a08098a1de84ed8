# sage/services/llm_service.py

import asyncio

from sage_cp_plugin import ControlPlaneManager, ExecutionInstance, RequestMetadata, RequestPriority
import logging

logger = logging.getLogger(__name__)


class LLMService:
    """SAGE LLM 服务，集成 Control Plane"""

    def __init__(self, config):
        self.config = config
        self.manager = None

    async def initialize(self):
        """初始化服务"""
        logger.info("Initializing LLM Service with Control Plane")

        # 创建 Control Plane
        self.manager = ControlPlaneManager(
            scheduling_policy=self.config.get("scheduling_policy", "adaptive"),
            enable_pd_separation=self.config.get("enable_pd_separation", True),
        )

        # 从配置加载 vLLM 实例
        for instance_config in self.config.get("vllm_instances", []):
            instance = ExecutionInstance(**instance_config)
            self.manager.register_instance(instance)

        # 启动
        await self.manager.start()
        logger.info("LLM Service initialized successfully")

    async def generate(self, prompt: str, **kwargs) -> str:
        """生成文本"""
        request = RequestMetadata(
            prompt=prompt,
            max_tokens=kwargs.get("max_tokens", 512),
            priority=kwargs.get("priority", RequestPriority.NORMAL),
        )

        request_id = await self.manager.submit_request(request)

        # 等待完成
        status = await self._wait_for_completion(request_id)

        if status.state == "completed":
            return status.output
        else:
            raise RuntimeError(f"Request failed: {status.error}")

    async def _wait_for_completion(self, request_id: str, timeout: float = 30.0):
        """等待请求完成"""
        import time
        start_time = time.time()

        while time.time() - start_time < timeout:
            status = await self.manager.get_request_status(request_id)
            if status.state in ["completed", "failed"]:
                return status
            await asyncio.sleep(0.1)

        raise TimeoutError(f"Request {request_id} timed out")

    async def shutdown(self):
        """关闭服务"""
        if self.manager:
            await self.manager.stop()
        logger.info("LLM Service shutdown complete")


# 使用示例
async def main():
    config = {
        "scheduling_policy": "adaptive",
        "enable_pd_separation": True,
        "vllm_instances": [
            {
                "instance_id": "vllm-1",
                "host": "localhost",
                "port": 8000,
                "model_name": "meta-llama/Llama-2-7b",
                "tensor_parallel_size": 2,
            }
        ]
    }

    service = LLMService(config)
    await service.initialize()

    try:
        output = await service.generate("Hello, how are you?")
        print(f"Output: {output}")
    finally:
        await service.shutdown()

asyncio.run(main())
