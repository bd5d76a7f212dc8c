"""Stream batching for the Ray hop: first item at once, later ones gathered."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.deployments.coalesce import coalesce


async def ticking(n: int, gap_s: float, log: list[str]):
    try:
        for i in range(n):
            yield i
            await asyncio.sleep(gap_s)
    finally:
        log.append("closed")


def test_first_item_alone_then_batches_and_nothing_lost():
    async def run():
        log: list[str] = []
        return [batch async for batch in coalesce(ticking(30, 0.002, log), interval_s=0.03)], log

    batches, log = asyncio.run(run())
    assert batches[0] == [0]
    assert [i for batch in batches for i in batch] == list(range(30))
    assert len(batches) < 30  # gathered, not one hop per item
    assert log == ["closed"]


def test_zero_interval_relays_items_as_they_come():
    async def run():
        return [batch async for batch in coalesce(ticking(5, 0.01, []), interval_s=0)]

    assert [i for batch in asyncio.run(run()) for i in batch] == [0, 1, 2, 3, 4]


def test_closing_the_consumer_closes_the_source():
    async def run():
        log: list[str] = []
        batches = coalesce(ticking(1000, 0.01, log), interval_s=0.01)
        await anext(batches)
        await batches.aclose()
        await asyncio.sleep(0)
        return log

    assert asyncio.run(run()) == ["closed"]


def test_source_error_reaches_the_consumer_after_earlier_items():
    async def failing():
        yield 1
        raise ValueError("engine broke")

    async def run():
        seen = []
        async for batch in coalesce(failing(), interval_s=0.01):
            seen.extend(batch)
        return seen

    with pytest.raises(ValueError, match="engine broke"):
        asyncio.run(run())
