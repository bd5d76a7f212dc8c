"""A stand-in for a fast GPU engine: every running request gets one token per TPOT_S, with no
compute, merged for a reader that reads less often (vLLM DELTA mode). Lets the model replica's
serving path (Ray's gRPC streaming, this project's formatting and pacing) be profiled on a CPU."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from serve_app.engines.cpu import CPUReferenceEngine
from serve_app.engines.protocol import EngineStats, GenerationDelta, GenerationRequest

TPOT_S = 0.010
TOKEN = 42


class ClockEngine(CPUReferenceEngine):
    running = 0

    async def generate_clock(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        prompt = len(request.prompt_token_ids)
        total = request.sampling.max_tokens
        start = time.perf_counter()
        sent = 0
        self.running += 1
        try:
            while sent < total:
                due = min(total, int((time.perf_counter() - start) / TPOT_S) + 1)
                if due <= sent:
                    await asyncio.sleep(start + (sent + 1) * TPOT_S - time.perf_counter())
                    continue
                n = due - sent
                sent = due
                yield GenerationDelta(
                    text=" tok" * n, token_ids=[TOKEN] * n, completion_tokens=sent, prompt_tokens=prompt,
                    finish_reason="length" if sent >= total else None,
                )
        finally:
            self.running -= 1

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        return self.generate_clock(request)

    def stats(self) -> EngineStats:
        return EngineStats(running=self.running)
