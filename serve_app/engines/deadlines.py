"""A deadline that counts only the time the event loop was free to see an answer.

A model replica's one event loop runs vLLM's output handler, Ray Serve's request handling and
every stream. Under full load (an H200 at concurrency 256, docs/benchmarks.md run 6) the loop was
held for up to 2.2 s at a time (``loop_lag`` max; what held it was not measured), and an engine's
answer that arrived in that time could not be seen until the loop was free. A health check
timed by the wall clock then calls a busy engine hung, and three such failures have Ray Serve
replace the replica with every stream on it. This deadline counts the wait in short ticks and
credits each tick with at most its asked length, so time the loop spent on other work does not
count against the engine; a wall-clock cap still ends the wait however busy the loop is.
"""

from __future__ import annotations

import asyncio

TICK_S = 0.05
# However busy a replica's loop, a health check's wait ends by then: below the deployments'
# default health_check_timeout_s (10 s), so the replica logs why before Ray Serve gives up on it.
HEALTH_WALL_CAP_S = 8.0


async def answered_within(
    answer: asyncio.Future[object], budget_s: float, wall_cap_s: float, tick_s: float = TICK_S
) -> bool:
    """Wait for ``answer`` until ``budget_s`` of loop time, or ``wall_cap_s`` of wall time, has
    passed; True if it is done by then (its result is not read, and it is not cancelled).

    Each tick of ``tick_s`` seconds counts at most ``tick_s`` however late the loop woke from it:
    on an idle loop the wait ends after about ``budget_s``, on a loop held up by other callbacks
    after ``budget_s`` plus the time they held it, and never after more than ``wall_cap_s``.
    Raises ValueError for a ``tick_s`` that is not above 0."""
    if tick_s <= 0:
        raise ValueError(f"tick_s must be above 0, not {tick_s}")
    loop = asyncio.get_running_loop()
    started = loop.time()
    counted = 0.0
    while not answer.done():
        now = loop.time()
        if counted >= budget_s or now - started >= wall_cap_s:
            return False
        step = min(tick_s, budget_s - counted, wall_cap_s - (now - started))
        await asyncio.wait({answer}, timeout=step)
        counted += min(step, loop.time() - now)
    return True
