"""A reader slower than its engine gets the missed deltas merged into one, in order."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.engines.delta_merge import DeltaCollector, merge, merging
from serve_app.engines.protocol import GenerationDelta


def delta(i: int, finish: str | None = None) -> GenerationDelta:
    return GenerationDelta(f"<{i}>", [i], i, 7, finish)


def test_merge_keeps_order_and_takes_the_newer_counts_and_finish():
    merged = merge(merge(delta(1), delta(2)), delta(3, "stop"))
    assert merged == GenerationDelta("<1><2><3>", [1, 2, 3], 3, 7, "stop")


def test_collector_hands_over_everything_put_since_the_last_get():
    async def run():
        collector = DeltaCollector()
        collector.put(delta(1))
        first = await collector.get()
        for i in (2, 3, 4):
            collector.put(delta(i))
        second = await collector.get()
        collector.end()
        return first, second, await collector.get()

    first, second, end = asyncio.run(run())
    assert first.token_ids == [1] and second.token_ids == [2, 3, 4] and second.text == "<2><3><4>"
    assert end is None


def test_a_slow_reader_does_not_slow_the_engine():
    produced: list[float] = []

    async def engine():
        loop = asyncio.get_running_loop()
        for i in range(1, 21):
            await asyncio.sleep(0.002)
            produced.append(loop.time())
            yield delta(i, "length" if i == 20 else None)

    async def run():
        reads = []
        async for d in merging(engine()):
            reads.append(d)
            await asyncio.sleep(0.02)
        return reads

    reads = asyncio.run(run())
    assert [t for d in reads for t in d.token_ids] == list(range(1, 21))
    assert len(reads) < 10
    assert produced[-1] - produced[0] < 0.15  # 20 steps at engine speed, not at the reader's


def test_an_error_is_raised_after_the_pending_output():
    async def engine():
        yield delta(1)
        yield delta(2)
        raise RuntimeError("step failed")

    async def run():
        seen: list[int] = []
        stream = merging(engine())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="step failed"):
            async for d in stream:
                seen.extend(d.token_ids)
        return seen

    assert asyncio.run(run()) == [1, 2]
