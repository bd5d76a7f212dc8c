"""Several streams read as one, tagged with their position: a request's ``n`` choices.

The first item of every stream is awaited before any is yielded, so an error that an engine
raises at a stream's start (a grammar that does not compile, a prompt vLLM rejects) reaches the
model server's caller before the first chunk, while the router can still answer 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


async def _first(stream: AsyncIterator[T]) -> Any:
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return _END


async def fan_in(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of ``streams`` as ``(stream index, item)``, in arrival order.

    The first failure of any stream is raised and the others are closed; closing the returned
    stream closes them all (for engine streams, that aborts the requests).
    """
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((index, item, None))
        except Exception as error:
            queue.put_nowait((index, None, error))
        finally:
            queue.put_nowait((index, _END, None))

    tasks: list[asyncio.Task[Any]] = []
    try:
        firsts = [asyncio.create_task(_first(stream)) for stream in streams]
        tasks.extend(firsts)
        await asyncio.gather(*firsts)
        remaining = 0
        for index, (stream, task) in enumerate(zip(streams, firsts, strict=True)):
            if task.result() is not _END:
                yield index, task.result()
                tasks.append(asyncio.create_task(pump(index, stream)))
                remaining += 1
        while remaining:
            index, item, error = await queue.get()
            if error is not None:
                raise error
            if item is _END:
                remaining -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
