"""Where this process's suspended coroutines wait: a census for ``/stats?waiting=1``.

Issue 13's concurrency-256 run on an H200 (docs/benchmarks.md, run 6) had Ray Serve counting 250
requests in the model replica while vLLM ran 24 and had none waiting: about 220 requests were
inside the replica but not yet at the model server's first line, for seconds, with the event loop
answering on time most of the time (``loop_lag`` p50 1 ms). Neither Serve's gauges nor the
latency stages can say which ``await`` holds them; this census can, from one snapshot.

Every coroutine and async generator object the garbage collector tracks is visited. A suspended
one that awaits another coroutine, an async generator's ``asend``/``athrow``, or nothing
(an async generator parked at ``yield``, waiting for its reader) is not where the time goes;
one that awaits anything else (a future, a task, a C-level awaitable such as gRPC's) is a
*leaf*, and leaves are counted by their frame's place and what they await. The walk holds the
loop for as long as ``gc.get_objects()`` takes, so it runs only when asked for, at most once
every few seconds (``Census``). The objects frozen at start-up (deployments/gc_heap.py) are not
in ``gc.get_objects()``, so the walk covers what was made since: requests, mostly.
"""

from __future__ import annotations

import gc
import time
import types
from collections import Counter
from typing import Any

# Awaited objects that are a link in a chain, not a wait: the thing they lead to is visited too.
_LINKS = (types.CoroutineType, types.AsyncGeneratorType, types.GeneratorType)
_LINK_TYPE_NAMES = frozenset({"async_generator_asend", "async_generator_athrow", "coroutine_wrapper"})
TOP = 20
CALLERS = 2  # callers named after a leaf's own place, where a chain of coroutines shows them


def _place(frame: types.FrameType) -> str:
    """``"<path>:<line> <function>"``, the path from the package root (or the standard library's)."""
    path = frame.f_code.co_filename
    if "serve_app/" in path:
        path = "serve_app/" + path.rsplit("serve_app/", 1)[1]
    elif "-packages/" in path:  # site-packages, dist-packages
        path = path.rsplit("-packages/", 1)[1]
    elif "/lib/python3" in path:
        path = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"


def await_census(top: int = TOP) -> dict[str, Any]:
    """``{"suspended": n, "leaves": n, "at_yield": n, "top": [[place, count], ...]}``.

    ``place`` is ``"<file>:<line> <function> awaits <type>"`` for a leaf (``file`` from the
    package root), then `` <- <file>:<line> <function>`` for up to CALLERS coroutines or async
    generators awaiting it (a chain through an async generator's ``__anext__`` cannot be
    followed), ``top`` the ``top`` most common, largest first. ``at_yield`` counts async
    generators parked at a ``yield`` (a stream whose reader has not asked for the next item)."""
    leaves: Counter[str] = Counter()
    suspended = at_yield = 0
    found: list[tuple[types.FrameType, object, object]] = []
    # id of an awaited coroutine -> (the coroutine or async generator awaiting it, its frame)
    awaiter: dict[int, tuple[object, types.FrameType]] = {}
    for obj in gc.get_objects():
        if isinstance(obj, types.CoroutineType):
            frame, awaited = obj.cr_frame, obj.cr_await
            if frame is None or obj.cr_running or awaited is None:
                continue  # finished, running this census, or not started
        elif isinstance(obj, types.AsyncGeneratorType):
            # ag_running stays True while an asend is in progress, also when the generator is
            # suspended at an await inside it: only ag_await tells a wait from running code.
            frame, awaited = obj.ag_frame, obj.ag_await
            if frame is None or (awaited is None and obj.ag_running):
                continue  # finished, or running this census
            if awaited is None:
                suspended += 1
                at_yield += 1
                continue
        else:
            continue
        suspended += 1
        if isinstance(awaited, _LINKS) or type(awaited).__name__ in _LINK_TYPE_NAMES:
            awaiter[id(awaited)] = (obj, frame)
            continue
        found.append((frame, obj, awaited))
    for frame, obj, awaited in found:
        name = type(awaited).__name__
        chain = [f"{_place(frame)} awaits {'Future' if name == 'FutureIter' else name}"]
        caller = awaiter.get(id(obj))
        while caller is not None and len(chain) <= CALLERS:
            chain.append(_place(caller[1]))
            caller = awaiter.get(id(caller[0]))
        leaves[" <- ".join(chain)] += 1
    return {
        "suspended": suspended,
        "leaves": sum(leaves.values()),
        "at_yield": at_yield,
        "top": [[place, count] for place, count in leaves.most_common(top)],
    }


class Census:
    """``await_census`` at most once every ``min_interval_s`` seconds per process: a caller that
    asks again sooner gets the last census, with its age (``age_s``). ``/stats`` is open to any
    client when API keys are off, and each census holds the loop for the walk: asking in a loop
    must not hold up the streams."""

    def __init__(self, min_interval_s: float = 5.0) -> None:
        self.min_interval_s = min_interval_s
        self._last: dict[str, Any] | None = None
        self._taken = 0.0

    def take(self) -> dict[str, Any]:
        """The census, fresh or from the last ``min_interval_s`` seconds: ``await_census``'s keys
        plus ``age_s``."""
        now = time.monotonic()
        if self._last is None or now - self._taken >= self.min_interval_s:
            self._last, self._taken = await_census(), now
        return {**self._last, "age_s": round(now - self._taken, 3)}
