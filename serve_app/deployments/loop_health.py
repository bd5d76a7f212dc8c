"""How long a replica's event loop and garbage collector hold requests up, for /stats.

A replica serves every request on one asyncio loop, which in a model replica also runs vLLM's
output handler (detokenizing and handing out every engine step's outputs). A callback that holds
the loop - a long JSON encode, a full garbage collection - delays every stream and every new
request behind it; the client sees that as time to first token that neither the engine nor Ray's
routing explains. Two windows measure it (issue 13's "event-loop lag"):

- ``loop_lag``: a task asks to wake every ``LAG_INTERVAL_S``; how much later than asked it woke
  is the time the loop was busy with something else (asyncio's own debug mode reports callbacks
  over 100 ms the same way, ``loop.slow_callback_duration``);
- ``gc_pause``: each generation-2 collection's duration, from ``gc.callbacks`` (the collections
  the frozen start-up heap, deployments/gc_heap.py, is meant to keep short).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from typing import Any

from serve_app.deployments.latency import LatencyWindow

LAG_INTERVAL_S = 0.05  # 20 samples a second: the 1,024-sample window covers about 50 s


class LoopHealth:
    """Event-loop lag and full-collection pauses of this process, as latency windows."""

    def __init__(self, interval_s: float = LAG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.loop_lag = LatencyWindow()
        self.gc_pause = LatencyWindow()
        self._task: asyncio.Task[None] | None = None
        self._gc_started: float | None = None

    def start(self) -> None:
        """Start sampling on the running loop and timing full collections (idempotent; call from a
        coroutine once start-up is over, so that its collections are not counted)."""
        if self._task is not None and not self._task.done():
            return  # the router calls this per request: the running case costs one check
        self._task = asyncio.get_running_loop().create_task(self._sample())
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.interval_s)
            self.loop_lag.add(max(0.0, loop.time() - asked - self.interval_s))

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.gc_pause.add(time.perf_counter() - self._gc_started)
            self._gc_started = None

    def summary(self) -> dict[str, Any]:
        """{"loop_lag": window summary, "gc_pause": window summary} (ms; latency.LatencyWindow)."""
        return {"loop_lag": self.loop_lag.summary(), "gc_pause": self.gc_pause.summary()}

    def close(self) -> None:
        """Stop sampling and unhook from the collector."""
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc/self/stat`` field 22, ``proc(5)``);
    None where /proc is missing. In a replica: how long its worker process existed before the
    constructor ran. Ray may hand the actor a worker it started earlier and kept idle in its pool,
    so this is an upper bound on the worker start and imports, not a start cost by itself (run 5:
    14.3 s, most of it idle since the cluster's start)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # The command name (field 2) may hold spaces: split after its closing parenthesis.
            fields = stat.read().rsplit(")", 1)[1].split()
            up = float(uptime.read().split()[0])
        return max(0.0, up - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
