"""Read an engine stream at most once per interval, with a leading-edge first read.

Every item a model server yields crosses a deployment boundary with its own serialisation, and
that per-item cost grows with concurrency (ray #52745). Engines merge the deltas a reader has
not taken yet (``serve_app.engines.delta_merge``; vLLM in ``DELTA`` mode), so reading less often
means fewer, larger deltas with no buffering of our own: the model server's process, which also
runs vLLM's output handling, wakes once per interval per stream instead of once per token.

The first delta goes out as soon as it exists (time to first token is untouched), and so does
any delta that arrives after a quiet interval. Ray Serve LLM's fixed 50 ms batcher without the
leading-edge flush cost +48 ms TTFT at concurrency 1 (ray #59681, fixed in #64534).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from serve_app.engines.protocol import GenerationDelta


async def paced(
    deltas: AsyncIterator[GenerationDelta], interval_s: float, max_tokens: int | None = None
) -> AsyncIterator[GenerationDelta]:
    """``deltas``, read no more often than every ``interval_s`` after the first.

    With ``max_tokens``, the read after which the request will have run out of tokens happens
    when the last one is due (from the pace of the previous interval) rather than a whole
    interval later: the response ends, and the client's slot frees, without waiting out the
    interval. Closing the returned stream closes ``deltas`` (so the engine aborts the request).
    """
    previous: float | None = None
    async with contextlib.aclosing(deltas):  # type: ignore[type-var]
        async for delta in deltas:
            read = time.monotonic()
            yield delta
            if delta.finish_reason is not None:
                return
            wait = interval_s
            if max_tokens is not None and previous is not None and delta.token_ids:
                seconds_per_token = (read - previous) / len(delta.token_ids)
                wait = min(wait, (max_tokens - delta.completion_tokens) * seconds_per_token)
            previous = read
            wait -= time.monotonic() - read
            if wait > 0:
                await asyncio.sleep(wait)
