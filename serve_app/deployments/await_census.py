"""Where this process's suspended coroutines wait: a census for ``/stats?waiting=1``.

Issue 13's concurrency-256 run on an H200 (docs/benchmarks.md, run 6) had Ray Serve counting 250
requests in the model replica while vLLM ran 24 and had none waiting: about 220 requests were
inside the replica but not yet at the model server's first line, for seconds, with the event loop
answering on time most of the time (``loop_lag`` p50 1 ms). Neither Serve's gauges nor the
latency stages can say which ``await`` holds them; this census is meant to, from one snapshot.

Every coroutine and async generator object the garbage collector tracks is visited. A suspended
one that awaits another coroutine, an async generator's ``asend``/``athrow``, or nothing
(an async generator parked at ``yield``, waiting for its reader) is not where the time goes;
one that awaits anything else (a future, a task, a C-level awaitable such as gRPC's) is a
*leaf*, and leaves are counted by their frame's place and what they await. The walk holds the
loop for as long as ``gc.get_objects()`` takes, so it runs only when asked for, at most once
every few seconds (``Census``). The objects frozen at start-up (deployments/gc_heap.py) are not
in ``gc.get_objects()``, so the walk covers what was made since: requests, mostly.

Compiled (Cython) coroutines are counted apart, under ``native``: gRPC's asyncio layer, which
Ray Serve's router-to-replica transport runs on, is Cython, so a request held between the
router's gRPC call and the replica's Python handler (issue 13's run 7: about 200 calls in the
router awaiting the replica's initial metadata, none of them in the replica's Python) waits only
in such coroutines. They carry a frame with a file but no line. A Python coroutine awaiting one
awaits its ``coroutine_wrapper``, which the walk follows to the compiled coroutine, so each wait
is counted once, under ``native``, with its Python callers. gRPC keeps one watcher per open call
(client and server) waiting for the call's end: those are counted as ``grpc_calls``, not waits.
"""

from __future__ import annotations

import gc
import inspect
import time
import types
from collections import Counter
from typing import Any

from serve_app.deployments.source_paths import OUTSIDE, SourcePaths

# Awaited objects that lead to another coroutine or async generator, itself visited: not a wait.
_LINK_TYPE_NAMES = frozenset({"async_generator_asend", "async_generator_athrow"})
_WRAPPER = "coroutine_wrapper"  # a compiled coroutine's __await__: followed to the coroutine
# gRPC's per-call watchers, suspended for a call's whole life (grpc/_cython/_cygrpc/aio): open
# calls, not waits. On the client, a call's status; on the server, the client's cancellation.
_GRPC_CALL_WATCHERS = {"_handle_status_once_received": "client", "_handle_cancellation_from_core": "server"}
TOP = 20
CALLERS = 2  # callers named after a leaf's own place, where a chain of coroutines shows them
NATIVE_CALLERS = 4  # compiled chains are deeper before they reach Python (Ray's replica_result.py)


def _place(frame: types.FrameType, paths: SourcePaths) -> str:
    """``"<path>:<line> <function>"``, the path from the folder it was imported from
    (``SourcePaths``); ``"<path> <function>"`` for a compiled frame, which has no line
    (``f_lineno`` -1 or None)."""
    path, where = paths.relative(frame.f_code.co_filename)
    line = frame.f_lineno
    if line is None or line < 0:
        if where == OUTSIDE:  # a Cython source's build path: its last parts name it
            path = "/".join(path.split("/")[-3:])
        return f"{path} {frame.f_code.co_name}"
    return f"{path}:{line} {frame.f_code.co_name}"


_COROUTINE_PARTS = ("cr_await", "cr_frame", "cr_running", "send", "throw")


def _is_native(kind: type) -> bool:
    """A Cython-compiled coroutine's type (``_cython_3_x.coroutine``): named ``coroutine`` and
    with ``cr_await``, ``cr_frame`` and ``cr_running`` as Python's own coroutines have, but
    another type. Told by those parts, not by ``__module__``: Cython's coroutine type lists
    ``__module__`` among its members, so on the GPU machine's Python 3.12 the type's
    ``__module__`` was a member descriptor, not a string (run 8's census failed on it)."""
    return (
        kind is not types.CoroutineType
        and getattr(kind, "__name__", None) == "coroutine"
        and all(hasattr(kind, part) for part in _COROUTINE_PARTS)
    )


def _not_started(obj: types.CoroutineType | types.AsyncGeneratorType) -> bool:
    if type(obj) is types.CoroutineType:
        return inspect.getcoroutinestate(obj) == inspect.CORO_CREATED
    state = getattr(inspect, "getasyncgenstate", None)  # Python 3.12+
    if state is not None:
        return state(obj) == "AGEN_CREATED"
    return obj.ag_frame is not None and obj.ag_frame.f_lasti <= 0


def _innermost(awaited: types.GeneratorType) -> tuple[types.FrameType | None, object]:
    """A generator-based awaitable (``@types.coroutine``, ``yield from``, Ray's
    ``DeploymentResponse.__await__``): its innermost generator's frame and what that awaits."""
    while type(awaited.gi_yieldfrom) is types.GeneratorType:
        awaited = awaited.gi_yieldfrom
    return awaited.gi_frame, awaited.gi_yieldfrom


def _suspended(obj: object, kind: type) -> tuple[types.FrameType, object] | None:
    """(frame, what it awaits) of a Python coroutine or async generator (``kind`` is its type)
    that is neither finished nor running this census; None for anything else."""
    if kind is types.CoroutineType:
        if obj.cr_frame is None or obj.cr_running:
            return None
        return obj.cr_frame, obj.cr_await
    if kind is types.AsyncGeneratorType:
        # ag_running stays True while an asend is in progress, also when the generator is
        # suspended at an await inside it: only ag_await tells a wait from running code.
        if obj.ag_frame is None or (obj.ag_running and obj.ag_await is None):
            return None
        return obj.ag_frame, obj.ag_await
    return None


def _label(frame: types.FrameType | None, obj: object, paths: SourcePaths) -> str:
    if frame is not None:
        return _place(frame, paths)
    return str(getattr(obj, "__qualname__", None) or type(obj).__name__)


def _awaited_name(awaited: object) -> str:
    return "Future" if type(awaited).__name__ == "FutureIter" else type(awaited).__name__


class _Walk:
    """One pass over the collector's objects: ``visit`` each, then ``result``."""

    def __init__(self) -> None:
        self.paths = SourcePaths()
        self.native_kinds: dict[type, bool] = {}  # type -> compiled coroutine? (a lookup, not a
        # name comparison per object: the walk visits every tracked object)
        self.not_started: Counter[str] = Counter()
        self.suspended = self.at_yield = 0
        # leaves: (label of the place, the waiting object, what it awaits, inner place or None)
        self.python: list[tuple[str, object, object, str | None]] = []
        self.native: list[tuple[str, object, object]] = []
        self.grpc_calls: Counter[str] = Counter()
        # id of an awaited coroutine (Python or compiled) -> (its awaiter, the awaiter's place)
        self.awaiter: dict[int, tuple[object, str]] = {}

    def _compiled(self, kind: type) -> bool:
        known = self.native_kinds.get(kind)
        if known is None:
            known = self.native_kinds[kind] = _is_native(kind)
        return known

    def _link(self, obj: object, place: str, awaited: object) -> bool:
        """Records ``obj`` as the awaiter of the coroutine ``awaited`` leads to; False when
        ``awaited`` is a wait of its own (a leaf)."""
        kind = type(awaited)
        if kind is types.CoroutineType or kind is types.AsyncGeneratorType or self._compiled(kind):
            self.awaiter[id(awaited)] = (obj, place)
            return True
        name = kind.__name__
        if name == _WRAPPER:
            linked = False
            for inner in gc.get_referents(awaited):  # the wrapper refers to its coroutine alone
                if self._compiled(type(inner)):
                    self.awaiter[id(inner)] = (obj, place)
                    linked = True
            return linked  # a wrapper of something else: a wait of its own
        return name in _LINK_TYPE_NAMES

    def visit(self, obj: object) -> None:
        kind = type(obj)  # type(), not isinstance(): an object's own __class__ may raise
        if kind is not types.CoroutineType and kind is not types.AsyncGeneratorType:
            if self._compiled(kind):
                self._visit_native(obj)
            return
        state = _suspended(obj, kind)
        if state is None:
            return
        frame, awaited = state
        if awaited is None:
            if _not_started(obj):
                self.not_started[_place(frame, self.paths)] += 1
            elif kind is types.AsyncGeneratorType:
                self.suspended += 1
                self.at_yield += 1
            return
        self.suspended += 1
        place = _place(frame, self.paths)
        if self._link(obj, place, awaited):
            return
        inner = None
        if type(awaited) is types.GeneratorType:
            inner_frame, awaited = _innermost(awaited)
            inner = _place(inner_frame, self.paths) if inner_frame is not None else None
        self.python.append((place, obj, awaited, inner))

    def _visit_native(self, obj: object) -> None:
        awaited = getattr(obj, "cr_await", None)
        # No await: not started, running, or finished; a compiled coroutine cannot say which.
        if awaited is None or getattr(obj, "cr_running", False):
            return
        place = _label(getattr(obj, "cr_frame", None), obj, self.paths)
        if not self._link(obj, place, awaited):
            self.native.append((place, obj, awaited))

    def _watched_call(self, obj: object) -> str | None:
        """ "client" or "server" when a gRPC per-call watcher is ``obj`` or awaits it."""
        while obj is not None:
            side = _GRPC_CALL_WATCHERS.get(str(getattr(obj, "__name__", "")))
            if side is not None:
                return side
            caller = self.awaiter.get(id(obj))
            obj = caller[0] if caller is not None else None
        return None

    def _chain(self, first: list[str], obj: object, callers: int) -> str:
        caller = self.awaiter.get(id(obj))
        while caller is not None and len(first) <= callers:
            first.append(caller[1])
            caller = self.awaiter.get(id(caller[0]))
        return " <- ".join(first)

    def result(self, top: int) -> dict[str, Any]:
        leaves: Counter[str] = Counter()
        for place, obj, awaited, inner in self.python:
            name = "nothing (a bare yield)" if awaited is None else _awaited_name(awaited)
            first = [f"{inner} awaits {name}", place] if inner else [f"{place} awaits {name}"]
            leaves[self._chain(first, obj, CALLERS)] += 1
        native: Counter[str] = Counter()
        for place, obj, awaited in self.native:
            side = self._watched_call(obj)
            if side is not None:
                self.grpc_calls[side] += 1
                continue
            native[self._chain([f"{place} awaits {_awaited_name(awaited)}"], obj, NATIVE_CALLERS)] += 1
        return {
            "suspended": self.suspended,
            "leaves": sum(leaves.values()),
            "at_yield": self.at_yield,
            "not_started": [[place, count] for place, count in self.not_started.most_common(top)],
            "top": [[place, count] for place, count in leaves.most_common(top)],
            "native": [[place, count] for place, count in native.most_common(top)],
            "grpc_calls": {"client": self.grpc_calls["client"], "server": self.grpc_calls["server"]},
        }


def await_census(top: int = TOP) -> dict[str, Any]:
    """``{"suspended": n, "leaves": n, "at_yield": n, "not_started": [[place, count], ...],
    "top": [[place, count], ...], "native": [[place, count], ...], "grpc_calls": {"client": n,
    "server": n}}``.

    ``place`` in ``top`` is ``"<file>:<line> <function> awaits <type>"`` for a leaf (``file``
    from the package root), then `` <- <file>:<line> <function>`` for up to CALLERS coroutines
    or async generators awaiting it; the ``top`` most common, largest first. A chain through an
    async generator's ``__anext__`` cannot be followed to its caller. ``at_yield`` counts started
    async generators parked at a ``yield`` (a stream whose reader has not asked for the next
    item); ``not_started`` coroutines and async generators created but not yet run once (a task
    still queued for its first step), by place. ``native`` is ``top`` for compiled coroutines
    (gRPC's asyncio layer, ``"<file> <function>"``) with up to NATIVE_CALLERS callers, compiled
    or Python; those waits are not in ``leaves`` or ``top``. ``grpc_calls``: gRPC calls open in
    this process, as client and as server (one per-call watcher each)."""
    walk = _Walk()
    for obj in gc.get_objects():
        walk.visit(obj)
    return walk.result(top)


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
        (or ``error``, naming why the walk failed) plus ``age_s``."""
        now = time.monotonic()
        if self._last is None or now - self._taken >= self.min_interval_s:
            try:
                census = await_census()
            except Exception as error:  # a diagnostic must not fail /stats (or read as "not ready")
                census = {"error": f"{type(error).__name__}: {error}"[:500]}
            self._last, self._taken = census, now
        return {**self._last, "age_s": round(now - self._taken, 3)}
