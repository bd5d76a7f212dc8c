"""Driving the CPU reference engine from tests: one engine per scenario, inside one ``asyncio.run``."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from serve_app.engines.cpu import CPUReferenceEngine
from serve_app.engines.protocol import EngineConfig, GenerationDelta, GenerationRequest, SamplingOptions

PROMPT = [429, 14, 445, 3, 382, 391, 389]  # "Hello, world! How are you" with the fixtures' tokenizer
GREEDY = SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True)


def request(request_id: str = "r", prompt: list[int] | None = None, **sampling) -> GenerationRequest:
    """PROMPT with GREEDY's options, changed by ``sampling``."""
    return GenerationRequest(
        request_id, list(PROMPT if prompt is None else prompt), dataclasses.replace(GREEDY, **sampling)
    )


async def collect(engine: CPUReferenceEngine, req: GenerationRequest) -> list[GenerationDelta]:
    return [delta async for delta in engine.generate(req)]


def tokens(deltas: list[GenerationDelta]) -> list[int]:
    return [token for delta in deltas for token in delta.token_ids]


def text(deltas: list[GenerationDelta]) -> str:
    return "".join(delta.text for delta in deltas)


def run(checkpoint: Path, scenario, dtype: str | None = None, **config):
    """Start an engine, run ``scenario(engine)`` and shut the engine down, in one event loop."""

    async def main():
        engine = CPUReferenceEngine(
            EngineConfig(model_name="tiny", checkpoint=checkpoint, **config), dtype=dtype
        )
        await engine.start()
        try:
            return await scenario(engine)
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def generate(
    checkpoint: Path, *requests: GenerationRequest, dtype: str | None = "float32"
) -> list[list[GenerationDelta]]:
    """Each request's deltas, one request after the other on one engine (float32 by default:
    bf16 logits have ties, which make argmax and a top-1 draw pick different tokens)."""

    async def scenario(engine):
        return [await collect(engine, req) for req in requests]

    return run(checkpoint, scenario, dtype=dtype)
