"""Stream pacing for the Ray hop: the first delta at once, then one read per interval."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from serve_app.deployments.pacing import StreamPace, paced
from serve_app.engines.delta_merge import merging
from serve_app.engines.protocol import GenerationDelta


async def engine_stream(n: int, gap_s: float, log: list[str]):
    """Like an engine: n one-token deltas, gap_s apart, the last one finished."""
    try:
        for i in range(1, n + 1):
            yield GenerationDelta(f"t{i} ", [i], i, 3, "length" if i == n else None)
            if i < n:
                await asyncio.sleep(gap_s)
    finally:
        log.append("closed")


async def timed(stream) -> list[tuple[float, GenerationDelta]]:
    start = time.monotonic()
    return [(time.monotonic() - start, delta) async for delta in stream]


def test_first_delta_at_once_then_fewer_larger_deltas_and_nothing_lost():
    log: list[str] = []
    got = asyncio.run(timed(paced(merging(engine_stream(40, 0.002, log)), interval_s=0.03)))
    deltas = [delta for _, delta in got]
    assert got[0][0] < 0.02 and deltas[0].token_ids == [1]
    assert "".join(d.text for d in deltas) == "".join(f"t{i} " for i in range(1, 41))
    assert [t for d in deltas for t in d.token_ids] == list(range(1, 41))
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 40
    assert len(deltas) < 10  # ~80 ms of output in 30 ms reads, not one hop per token
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(got)]
    assert min(gaps[:-1]) >= 0.025
    assert log == ["closed"]


def test_a_delta_after_a_quiet_interval_goes_out_at_once():
    got = asyncio.run(timed(paced(merging(engine_stream(3, 0.1, [])), interval_s=0.03)))
    assert [len(d.token_ids) for _, d in got] == [1, 1, 1]
    assert got[1][0] == pytest.approx(0.1, abs=0.03) and got[2][0] == pytest.approx(0.2, abs=0.04)


def test_the_last_read_comes_when_the_last_token_is_due_not_an_interval_later():
    # 12 tokens 40 ms apart, read every 320 ms: reads at 0 and ~320 ms, and the last three tokens
    # are due ~120 ms after that (~440 ms); a whole interval would end the response at ~640 ms.
    # (Long steps: the 100 ms of slack below holds on a loaded 2-core machine.)
    got = asyncio.run(timed(paced(merging(engine_stream(12, 0.04, [])), interval_s=0.32, max_tokens=12)))
    assert got[-1][1].finish_reason == "length"
    assert [t for _, d in got for t in d.token_ids] == list(range(1, 13))
    assert got[-1][0] < 0.54
    assert len(got) <= 5


def test_zero_interval_relays_deltas_as_they_come():
    got = asyncio.run(timed(paced(merging(engine_stream(5, 0.01, [])), interval_s=0)))
    assert [d.token_ids for _, d in got] == [[1], [2], [3], [4], [5]]


def test_closing_the_paced_stream_closes_the_engine_stream():
    async def run():
        log: list[str] = []
        stream = paced(merging(engine_stream(1000, 0.005, log)), interval_s=0.01)
        await anext(stream)
        await anext(stream)
        await stream.aclose()
        await asyncio.sleep(0)
        return log

    assert asyncio.run(run()) == ["closed"]


def test_an_engine_error_arrives_after_the_output_before_it():
    async def failing():
        yield GenerationDelta("a", [1], 1, 3)
        yield GenerationDelta("b", [2], 2, 3)
        raise ValueError("engine broke")

    async def run():
        seen = []
        async for delta in paced(merging(failing()), interval_s=0.01):
            seen.append(delta.text)
        return seen

    with pytest.raises(ValueError, match="engine broke"):
        asyncio.run(run())


def test_pace_follows_the_streams_in_flight():
    """One stream is read at every engine output; many share the item budget, up to the cap."""
    pace = StreamPace(max_interval_s=0.05, items_per_s=2560)
    with pace.streaming():
        assert pace.interval_s() == pytest.approx(1 / 2560)
        with pace.streaming(63):
            assert pace.interval_s() == pytest.approx(64 / 2560)
            with pace.streaming(200):
                assert pace.interval_s() == 0.05
    assert pace.in_flight == 0
    assert StreamPace(max_interval_s=0.05, items_per_s=0).interval_s() == 0.05


def test_a_lone_stream_gets_every_engine_output():
    """At concurrency 1 the client sees the engine's own token pace, not 50 ms chunks (issue 13)."""
    pace = StreamPace(max_interval_s=0.05, items_per_s=2560)

    async def run():
        with pace.streaming():
            return await timed(paced(merging(engine_stream(20, 0.005, [])), pace.interval_s))

    deltas = [delta for _, delta in asyncio.run(run())]
    assert [t for d in deltas for t in d.token_ids] == list(range(1, 21))
    assert len(deltas) >= 15  # (nearly) one chunk per token; a fixed 50 ms interval gives 2-3
