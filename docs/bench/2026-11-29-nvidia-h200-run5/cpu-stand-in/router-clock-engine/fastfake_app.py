"""A ModelServer whose engine yields tokens on a clock, as vLLM's DELTA mode does (merged when the
reader lags): the router's request path under many concurrent streams, without a GPU."""
import asyncio
import os
import time
from pathlib import Path

from ray import serve

from serve_app.deployments.builder import plan_models
from serve_app.deployments.model_server import ModelServer
from serve_app.engines.cpu import CPUReferenceEngine
from serve_app.engines.protocol import GenerationDelta
from serve_app.engines.selection import Platform, engine_config
from serve_app.registry.models import ModelSpec

STEP = float(os.environ.get("FAKE_STEP", "0.05"))


class ClockEngine(CPUReferenceEngine):
    def generate(self, request):
        return self._clock(request)

    async def _clock(self, request):
        n = request.sampling.max_tokens
        prompt = len(request.prompt_token_ids)
        await asyncio.sleep(0.03)
        start, sent = time.monotonic(), 0
        while sent < n:
            due = min(n, 1 + int((time.monotonic() - start) / STEP))
            if due > sent:
                k, sent = due - sent, due
                yield GenerationDelta("x" * k, [100] * k, sent, prompt, "length" if sent == n else None)
            else:
                await asyncio.sleep(STEP)


spec = ModelSpec(name="fake", checkpoint=Path("/work/main/checkpoints/qwen2-small"), engine="cpu", max_model_len=512)
(planned,) = plan_models([spec], Platform(has_vllm=False, gpus=0))
app = serve.deployment(ModelServer).options(**planned.options).bind(ClockEngine, engine_config(spec), 0.05)
