"""A CPU reference engine that hangs on request, for the health-check test (test_operations.py).

A request with seed HANG_SEED puts the engine in the state of a vLLM engine core stuck in a
kernel: that request's stream never yields, and ``check_health`` never returns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from serve_app.engines.cpu import CPUReferenceEngine
from serve_app.engines.protocol import GenerationDelta, GenerationRequest

HANG_SEED = 4242


class HangingEngine(CPUReferenceEngine):
    hung = False

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        if request.sampling.seed == HANG_SEED:
            self.hung = True
        if self.hung:
            return self._never()
        return super().generate(request)

    async def _never(self) -> AsyncIterator[GenerationDelta]:
        await asyncio.Event().wait()
        yield GenerationDelta("", [], 0, 0)  # unreachable: makes this an async generator

    async def check_health(self) -> None:
        if self.hung:
            await asyncio.Event().wait()
        await super().check_health()
