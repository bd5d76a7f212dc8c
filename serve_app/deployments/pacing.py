"""Read an engine stream at most once per interval, with a leading-edge first read.

Every item a model server yields crosses a deployment boundary with its own serialisation, and
that per-item cost grows with concurrency (ray #52745). Engines merge the deltas a reader has
not taken yet (``serve_app.engines.delta_merge``; vLLM in ``DELTA`` mode), so reading less often
means fewer, larger deltas with no buffering of our own: the model server's process, which also
runs vLLM's output handling, wakes once per interval per stream instead of once per token.

The first delta goes out as soon as it exists (time to first token is untouched), and so does
any delta that arrives after a quiet interval. Ray Serve LLM's fixed 50 ms batcher without the
leading-edge flush cost +48 ms TTFT at concurrency 1 (ray #59681, fixed in #64534).

The interval follows the load (``StreamPace``): what costs is items per second through the
replica, all streams together, so each stream's interval is the replica's streams in flight
divided by an item budget, capped at the configured maximum. One stream then gets every engine
output (inter-token latency as bare vLLM's: a fixed 50 ms made a chat UI stutter, issue 13),
and at 128 streams the pace is what a fixed 50 ms interval gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

from serve_app.engines.protocol import GenerationDelta


class StreamPace:
    """The read interval of a replica's streams, from how many are in flight.

    ``interval_s() = min(max_interval_s, in_flight / items_per_s)`` seconds: the replica's
    streams together yield at most about ``items_per_s`` items a second once the engine produces
    more than that, and each stream waits no longer than ``max_interval_s``. ``items_per_s`` 0
    means always ``max_interval_s`` (the fixed interval of earlier versions).
    """

    def __init__(self, max_interval_s: float, items_per_s: float) -> None:
        self.max_interval_s = max_interval_s
        self.items_per_s = items_per_s
        self.in_flight = 0

    def interval_s(self) -> float:
        if self.items_per_s <= 0:
            return self.max_interval_s
        return min(self.max_interval_s, self.in_flight / self.items_per_s)

    @contextlib.contextmanager
    def streaming(self, streams: int = 1) -> Iterator[None]:
        """Count ``streams`` (a request's choices) as in flight while the block runs."""
        self.in_flight += streams
        try:
            yield
        finally:
            self.in_flight -= streams


async def paced(
    deltas: AsyncIterator[GenerationDelta],
    interval_s: float | Callable[[], float],
    max_tokens: int | None = None,
) -> AsyncIterator[GenerationDelta]:
    """``deltas``, read no more often than every ``interval_s`` after the first.

    ``interval_s`` is seconds, or a function giving them, asked again after every read (a
    ``StreamPace``'s ``interval_s``).

    With ``max_tokens``, the read after which the request will have run out of tokens happens
    when the last one is due (from the pace of the previous interval) rather than a whole
    interval later: the response ends, and the client's slot frees, without waiting out the
    interval. Closing the returned stream closes ``deltas`` (so the engine aborts the request).
    """
    interval = interval_s if callable(interval_s) else (lambda: interval_s)
    previous: float | None = None
    async with contextlib.aclosing(deltas):  # type: ignore[type-var]
        async for delta in deltas:
            read = time.monotonic()
            yield delta
            if delta.finish_reason is not None:
                return
            wait = interval()
            if max_tokens is not None and previous is not None and delta.token_ids:
                seconds_per_token = (read - previous) / len(delta.token_ids)
                wait = min(wait, (max_tokens - delta.completion_tokens) * seconds_per_token)
            previous = read
            wait -= time.monotonic() - read
            if wait > 0:
                await asyncio.sleep(wait)
