"""Deltas a slow reader has not taken yet are merged into one.

This is part of the engine protocol (``Engine.generate``): vLLM does it in ``DELTA`` output mode
(its ``RequestOutputCollector`` merges outputs the consumer has not read), and the model server
relies on it to read each stream once per stream interval instead of once per token. Reading
less often is what saves the work: every read is a wake-up, a delta object and a message on the
Ray hop, in the process that also runs vLLM's output handling.

``merging`` gives an engine whose stream is pull-driven (the CPU reference engine) the same
behaviour: it reads the source eagerly in a task and keeps one pending delta.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from serve_app.engines.protocol import GenerationDelta


def merge(older: GenerationDelta, newer: GenerationDelta) -> GenerationDelta:
    """One delta covering both, in order (counts are cumulative, so the newer ones stand)."""
    return GenerationDelta(
        text=older.text + newer.text,
        token_ids=older.token_ids + newer.token_ids,
        completion_tokens=newer.completion_tokens,
        prompt_tokens=newer.prompt_tokens,
        finish_reason=newer.finish_reason,
        logprobs=None
        if older.logprobs is None and newer.logprobs is None
        else [*(older.logprobs or ()), *(newer.logprobs or ())],
        prompt_logprobs=older.prompt_logprobs if older.prompt_logprobs is not None else newer.prompt_logprobs,
    )


class DeltaCollector:
    """One request's hand-off from producer to reader; ``put`` never blocks."""

    def __init__(self) -> None:
        self._pending: GenerationDelta | None = None
        self._error: BaseException | None = None
        self._ended = False
        self._ready = asyncio.Event()

    def put(self, delta: GenerationDelta) -> None:
        self._pending = delta if self._pending is None else merge(self._pending, delta)
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    async def get(self) -> GenerationDelta | None:
        """Everything new since the last call, merged; None once the stream has ended.

        A failure is raised after the output that came before it has been read."""
        while True:
            if self._pending is not None:
                delta, self._pending = self._pending, None
                return delta
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            self._ready.clear()
            await self._ready.wait()


async def merging(source: AsyncIterator[GenerationDelta]) -> AsyncIterator[GenerationDelta]:
    """``source``, read eagerly, with deltas the reader has not taken yet merged.

    Closing the returned stream cancels the reading task, which closes ``source`` (for an engine
    stream, that aborts the request).
    """
    collector = DeltaCollector()

    async def pump() -> None:
        try:
            async for delta in source:
                collector.put(delta)
        except Exception as error:  # handed to the reader, raised there
            collector.fail(error)
        finally:
            collector.end()
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()

    task = asyncio.create_task(pump())
    try:
        while (delta := await collector.get()) is not None:
            yield delta
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
