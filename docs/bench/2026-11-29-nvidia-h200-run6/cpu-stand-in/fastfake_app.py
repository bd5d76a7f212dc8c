"""A ModelServer whose engine mimics vLLM's front end under load: one output-handler task that,
every STEP seconds, spends BURN_US of CPU on the loop per running request (vLLM detokenizes and
hands out every request's new token on this loop), then hands each request its token (merged
when the reader lags, as DELTA mode does)."""
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

STEP = float(os.environ.get("FAKE_STEP", "0.01"))
BURN_US = float(os.environ.get("BURN_US", "100"))


class _Req:
    __slots__ = ("n", "sent", "ready", "prompt")

    def __init__(self, n, prompt):
        self.n, self.sent, self.ready, self.prompt = n, 0, asyncio.Event(), prompt


class ClockEngine(CPUReferenceEngine):
    _active: dict | None = None

    def generate(self, request):
        return self._stream(request)

    def _handler(self):
        if self._active is None:
            self._active = {}
            asyncio.get_running_loop().create_task(self._output_handler())
        return self._active

    async def _output_handler(self):
        while True:
            await asyncio.sleep(STEP)
            active = self._active
            end = time.perf_counter() + BURN_US * 1e-6 * len(active)
            while time.perf_counter() < end:
                pass
            for req in active.values():
                req.sent = min(req.n, req.sent + 1)
                req.ready.set()

    async def _stream(self, request):
        active = self._handler()
        req = _Req(request.sampling.max_tokens, len(request.prompt_token_ids))
        key = object()
        active[key] = req
        given = 0
        try:
            while given < req.n:
                await req.ready.wait()
                req.ready.clear()
                k, given = req.sent - given, req.sent
                if k:
                    yield GenerationDelta("x" * k, [100] * k, given, req.prompt, "length" if given == req.n else None)
        finally:
            active.pop(key, None)


spec = ModelSpec(name="fake", checkpoint=Path("/work/main/checkpoints/qwen2-small"), engine="cpu", max_model_len=512)
(planned,) = plan_models([spec], Platform(has_vllm=False, gpus=0))
app = serve.deployment(ModelServer).options(**planned.options).bind(ClockEngine, engine_config(spec), 0.05)
