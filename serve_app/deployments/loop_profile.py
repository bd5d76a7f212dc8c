"""What a replica's event-loop thread spends its time on: a sampling profile for ``/stats?profile=S``.

Issue 13's run 7 on an H200 found the model replica's event-loop thread at 98-99% of a core at
concurrency 256 (``top -H``), with new requests waiting their turn for it inside Ray Serve's gRPC
call (docs/benchmarks.md). vLLM's output handler, Ray's streaming and this project's formatting
all run on that thread; which of them takes the time decides the fix. External profilers
(py-spy) need ptrace, which the GPU machine's container did not give (run 6's recordings never
came back), so the profile is taken from inside, by pyinstrument (a C-level sampling hook on the
calling thread, ``pyinstrument.Profiler``): started and stopped on the loop itself, it records
only the loop thread, the thread the replica's code runs on (with ``make serve``'s throughput
mode, also Ray's gRPC handling). How busy that thread was comes from its CPU time
(``time.thread_time``), as ``top`` would count it.

It costs while it runs: pyinstrument's hook sees every call and return on the thread (a few
percent to a few tens of percent on call-heavy code), so a profile is taken only when asked, for
at most ``MAX_SECONDS``, once per ``min_interval_s`` per process (``LoopProfiler``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from serve_app.deployments.source_paths import OUTSIDE, STDLIB, SourcePaths

MAX_SECONDS = 10.0
MIN_SECONDS = 0.5  # shorter asks get this: a profile of no samples would stand for 30 s
SAMPLE_INTERVAL_S = 0.001
TOP = 20
BUILTIN = "<built-in>"


def _bucket(path: str, paths: SourcePaths) -> str | None:
    """The package a frame's file belongs to: its top-level name under the folder it was
    imported from (``vllm``, ``ray``, ``grpc``, ``serve_app``), ``asyncio``, ``python`` for the
    rest of the standard library and for files outside every import folder, or None for a
    built-in (it takes its caller's)."""
    if path == BUILTIN or not path:
        return None
    relative, where = paths.relative(path)
    if where == STDLIB:
        return "asyncio" if relative.startswith("asyncio/") else "python"
    if where == OUTSIDE:  # a script, <stdin>
        return "python"
    return relative.split("/", 1)[0].removesuffix(".py")


def _place(frame: Any, paths: SourcePaths) -> str:
    path = frame.file_path or ""
    if path == BUILTIN:
        return f"{frame.function} (built-in)"
    return f"{paths.relative(path)[0]}:{frame.line_no} {frame.function}"


# Frames that run the event loop rather than work on it, by (file ending, function): the thread's
# entry, asyncio's loop, and Ray Serve's user-code loop thread. Under uvloop the loop itself is C
# that pyinstrument does not see, so its waiting and its own work are these frames' self time.
_RUNNERS = frozenset({
    ("threading.py", "run"), ("threading.py", "_bootstrap"), ("threading.py", "_bootstrap_inner"),
    ("asyncio/base_events.py", "run_forever"), ("asyncio/base_events.py", "_run_once"),
    ("asyncio/base_events.py", "run_until_complete"), ("asyncio/runners.py", "run"),
    ("ray/serve/_private/replica.py", "_run_user_code_event_loop"),
})  # fmt: skip


def _runner(frame: Any) -> bool:
    path = frame.file_path or ""
    return any(path.endswith(end) and frame.function == name for end, name in _RUNNERS)


def summarize(root: Any, duration_s: float, cpu_s: float | None = None, top: int = TOP) -> dict[str, Any]:
    """A pyinstrument session's frame tree (``Session.root_frame()``) as ``{"seconds",
    "busy_share", "loop_or_idle_s", "by_package": [[package, seconds, share of the seconds], ...],
    "top_self": [[place, seconds], ...], "top_total": [[place, seconds], ...]}``.

    ``busy_share`` is the thread's CPU time over the wall time (``cpu_s``, from
    ``time.thread_time``; without it, the share of samples outside ``loop_or_idle_s``).
    ``loop_or_idle_s``: samples in the event loop itself (asyncio's ``select``, the self time of
    the frames that run the loop, ``_RUNNERS``): waiting for work, and also any compiled code the
    loop runs that pyinstrument cannot see (uvloop's I/O, gRPC's Cython layer), so ``by_package``
    is not the whole of the busy time: ``unattributed_busy_s`` is the CPU time it leaves out.
    Self time is a frame's time less its children's; a built-in's (``json.dumps``, a C function)
    goes to its caller's package and is named with its caller. ``top_total`` counts a function
    once per path from the root (recursion is not counted twice). Seconds are rounded to
    milliseconds."""
    paths = SourcePaths()
    by_package: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    on_path: Counter[str] = Counter()  # places on the path from the root to the frame visited
    loop_or_idle = 0.0
    # (frame, package of the nearest non-built-in ancestor, place of the caller, inside select);
    # a frame of None leaves the place pushed after it.
    stack: list[tuple[Any, str, str, bool]] = [(root, "python", "", False)]
    while stack:
        frame, parent_package, caller, in_select = stack.pop()
        if frame is None:
            on_path[parent_package] -= 1  # here: the place being left
            continue
        if frame.function == "[self]":  # pyinstrument's synthetic leaf: its parent's own time
            continue
        place = _place(frame, paths)
        package = _bucket(frame.file_path or BUILTIN, paths) or parent_package
        in_select = in_select or (frame.function == "select" and "selectors.py" in (frame.file_path or ""))
        own = frame.time - sum(child.time for child in frame.children if child.function != "[self]")
        if frame.file_path == BUILTIN and caller:
            place = f"{place} <- {caller}"
        if in_select or _runner(frame):
            loop_or_idle += own
        else:
            by_package[package] += own
            self_time[place] += own
        if not on_path[place]:
            total_time[place] += frame.time
        on_path[place] += 1
        stack.append((None, place, "", False))
        named = place if frame.file_path != BUILTIN else caller  # what a built-in child is named after
        for child in frame.children:
            stack.append((child, package, named, in_select))
    attributed = sum(by_package.values())
    sampled = attributed + loop_or_idle
    if cpu_s is not None and duration_s > 0:
        busy_share = min(1.0, cpu_s / duration_s)
    else:
        busy_share = attributed / sampled if sampled > 0 else 0.0
    return {
        "seconds": round(duration_s, 3),
        "busy_share": round(busy_share, 3),
        "loop_or_idle_s": round(loop_or_idle, 3),
        "unattributed_busy_s": round(max(0.0, busy_share * duration_s - attributed), 3),
        "by_package": [
            [name, round(seconds, 3), round(seconds / sampled, 3) if sampled > 0 else 0.0]
            for name, seconds in by_package.most_common()
            if seconds >= 0.0005
        ],
        "top_self": [[place, round(s, 3)] for place, s in self_time.most_common(top) if s >= 0.0005],
        "top_total": [[place, round(s, 3)] for place, s in total_time.most_common(top) if s >= 0.0005],
    }


async def profile_loop(seconds: float, interval_s: float = SAMPLE_INTERVAL_S) -> dict[str, Any]:
    """Sample the running loop's thread for ``seconds`` (``summarize``'s keys). Must be awaited
    on the loop to profile. Meanwhile pyinstrument's hook replaces any other ``sys.setprofile``
    hook on that thread. The samples are summarised on a worker thread: a 10 s profile is some
    hundred thousand frames, seconds of work that must not hold the loop."""
    from pyinstrument import Profiler  # imported when asked: nothing loads it otherwise

    profiler = Profiler(interval=interval_s, async_mode="disabled")
    started, cpu_started = time.perf_counter(), time.thread_time()  # this thread's: the loop's
    profiler.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        session = profiler.stop()
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started

    def summary() -> dict[str, Any]:
        root = session.root_frame()
        if root is None:  # no sample at all
            busy = round(min(1.0, cpu / wall), 3) if wall > 0 else 0.0
            return {**summarize_empty(wall), "busy_share": busy}
        return summarize(root, wall, cpu)

    return await asyncio.to_thread(summary)


def summarize_empty(duration_s: float) -> dict[str, Any]:
    """``summarize``'s shape for a profile without samples."""
    return {"seconds": round(duration_s, 3), "busy_share": 0.0, "loop_or_idle_s": 0.0,
            "unattributed_busy_s": 0.0, "by_package": [], "top_self": [], "top_total": []}  # fmt: skip


class LoopProfiler:
    """``profile_loop`` at most once every ``min_interval_s`` per process, one at a time.

    A caller that asks while a profile runs shares it; one that asks within ``min_interval_s``
    of the last gets that one, with its age (``age_s``). ``/stats`` is open to any client when API
    keys are off, and a profile slows the loop it samples."""

    def __init__(self, min_interval_s: float = 30.0) -> None:
        self.min_interval_s = min_interval_s
        self._running: asyncio.Future[dict[str, Any]] | None = None
        self._last: dict[str, Any] | None = None
        self._taken = 0.0

    async def take(self, seconds: float) -> dict[str, Any]:
        """The loop's profile over ``seconds`` (within MIN_SECONDS and MAX_SECONDS), fresh or recent:
        ``summarize``'s keys (or ``error``, naming why it failed) plus ``age_s``."""
        now = time.monotonic()
        if self._running is not None and self._running.done():  # ended without its result (cancelled)
            self._running = None
        if self._running is None and self._last is not None and now - self._taken < self.min_interval_s:
            return {**self._last, "age_s": round(now - self._taken, 3)}
        if self._running is None:
            seconds = min(max(seconds, MIN_SECONDS), MAX_SECONDS)
            self._running = asyncio.ensure_future(self._profile(seconds))
        result = await asyncio.shield(self._running)
        return {**result, "age_s": round(time.monotonic() - self._taken, 3)}

    async def _profile(self, seconds: float) -> dict[str, Any]:
        try:
            result = await profile_loop(seconds)
        except Exception as error:  # a diagnostic must not fail /stats
            result = {"error": f"{type(error).__name__}: {error}"[:500]}
        finally:
            self._running = None  # also when cancelled: the next caller starts afresh
        self._last, self._taken = result, time.monotonic()
        return result
