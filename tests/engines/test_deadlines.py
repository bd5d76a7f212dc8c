"""The health checks' deadline counts loop time: a loop held up by other work (vLLM's output
handler under full load) must not make a busy engine look hung."""

import asyncio
import time

from serve_app.engines.deadlines import answered_within
from tests.busy_loop import hold_loop


def _answer_after(loop: asyncio.AbstractEventLoop, seconds: float) -> asyncio.Future[object]:
    answer = loop.create_future()
    loop.call_later(seconds, answer.set_result, None)
    return answer


def test_an_unanswered_check_fails_after_its_budget_on_an_idle_loop():
    async def run():
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        assert not await answered_within(loop.create_future(), 0.3, wall_cap_s=8.0)
        return time.monotonic() - started

    waited = asyncio.run(run())
    assert 0.29 <= waited < 0.6


def test_an_answer_that_comes_while_the_loop_is_busy_counts():
    """0.3 s of budget; the loop is free only between 0.2 s blocks, and the answer comes at 0.6 s
    of wall time. A wall-clock 0.3 s limit misses it (the first assertion shows the test can tell);
    the loop-time deadline sees it."""

    async def run(wait):
        loop = asyncio.get_running_loop()
        hog = asyncio.ensure_future(hold_loop(0.2))
        try:
            return await wait(_answer_after(loop, 0.6))
        finally:
            hog.cancel()

    async def wall_clock(answer):
        done, _ = await asyncio.wait({answer}, timeout=0.3)
        return bool(done)

    assert asyncio.run(run(wall_clock)) is False
    assert asyncio.run(run(lambda answer: answered_within(answer, 0.3, wall_cap_s=8.0))) is True


def test_a_busy_loop_still_ends_the_wait_at_the_wall_clock_cap():
    async def run():
        loop = asyncio.get_running_loop()
        hog = asyncio.ensure_future(hold_loop(0.2))
        started = time.monotonic()
        try:
            answered = await answered_within(loop.create_future(), 10.0, wall_cap_s=0.5)
        finally:
            hog.cancel()
        return answered, time.monotonic() - started

    answered, waited = asyncio.run(run())
    assert not answered
    assert 0.5 <= waited < 1.0


def test_an_answer_is_seen_at_once_and_not_cancelled():
    async def run():
        loop = asyncio.get_running_loop()
        answer = _answer_after(loop, 0.05)
        started = time.monotonic()
        assert await answered_within(answer, 1.0, wall_cap_s=8.0)
        assert answer.result() is None
        return time.monotonic() - started

    assert asyncio.run(run()) < 0.2
