"""The coroutine census behind /stats?waiting=1 (issue 13: where requests wait in a replica)."""

import asyncio
import re

from serve_app.deployments.await_census import Census, await_census


async def _held(event: asyncio.Event) -> None:
    await event.wait()


async def _outer(event: asyncio.Event) -> None:
    await _held(event)


async def _parked():
    yield 1
    yield 2


def test_the_census_names_where_coroutines_wait_and_who_awaits_them():
    async def run():
        event = asyncio.Event()
        tasks = [asyncio.ensure_future(_outer(event)) for _ in range(5)]
        parked = _parked()
        await parked.__anext__()
        await asyncio.sleep(0)
        census = await_census()
        event.set()
        await asyncio.gather(*tasks)
        await parked.aclose()
        return census

    census = asyncio.run(run())
    place, count = census["top"][0]
    assert count == 5
    # the leaf, then its caller and the caller's caller
    assert re.fullmatch(
        r"asyncio/locks\.py:\d+ wait awaits Future <- \S+test_await_census\.py:\d+ _held"
        r" <- \S+test_await_census\.py:\d+ _outer",
        place,
    ), place
    assert census["at_yield"] >= 1  # the async generator parked at its yield
    assert census["leaves"] >= 5 and census["suspended"] >= census["leaves"]


def test_a_census_asked_for_again_within_its_interval_is_the_last_one():
    census = Census(min_interval_s=60)
    first = census.take()
    assert first["age_s"] == 0
    again = census.take()
    assert again["top"] == first["top"] and again["age_s"] >= 0
    fresh = Census(min_interval_s=0)
    assert fresh.take()["age_s"] == 0 and fresh.take()["age_s"] == 0
