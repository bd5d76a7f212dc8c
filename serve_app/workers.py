"""Killable helper processes for work that must not hold the caller's event loop or GIL.

Two kinds of work run here: parsing and validating a large request body in the router (CPython's
``json`` parser and pydantic-core hold the GIL for the whole call, so a thread would still stall
the event loop: 0.3 s for a 16 MiB body of empty objects), and rendering a request-supplied chat
template in a model server (a template can loop for as long as it likes, and a Python thread
cannot be stopped).

Each worker is ``python -m serve_app.workers``: a plain subprocess, not ``multiprocessing``, so it
does not re-import the Ray worker's ``__main__``. Calls travel over its stdin/stdout as
length-prefixed pickles: ``(module, function, args)`` in, ``("ok", value)`` or
``("error", exception)`` out. Only functions in ``serve_app`` modules are called. A call past its
timeout kills the worker and starts a fresh one; the caller gets ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import logging
import math
import os
import pickle
import select
import subprocess
import sys
import time
from typing import Any, BinaryIO

_HEADER = 8  # bytes of big-endian frame length
CLOSED = "the server's helper processes are shut down (the replica is stopping)"
START_TIMEOUT_S = 60.0  # a warm-up (imports) that takes longer is stuck, not slow; read at each start

logger = logging.getLogger("ray.serve")


def _write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(len(payload).to_bytes(_HEADER, "big"))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame's payload; None when the stream ends before a whole frame (the child
    exited, also midway through writing one)."""
    header = stream.read(_HEADER)
    if len(header) < _HEADER:
        return None
    length = int.from_bytes(header, "big")
    payload = stream.read(length)
    return payload if len(payload) == length else None


def _read_frame_within(fd: int, timeout_s: float) -> bytes | None:
    """As ``_read_frame``, from a raw file descriptor with nothing read from it yet, the whole
    frame within ``timeout_s`` seconds, else ``TimeoutError``. ``poll``, not ``select``: a
    busy server's descriptors go past select's limit of 1024."""
    deadline = time.monotonic() + timeout_s
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def read_exactly(size: int) -> bytes | None:
        chunks: list[bytes] = []
        while size > 0:
            left_ms = math.ceil((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not poller.poll(left_ms):
                raise TimeoutError(f"no whole answer from the helper process within {timeout_s:g} s")
            chunk = os.read(fd, size)
            if not chunk:
                return None
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    header = read_exactly(_HEADER)
    return None if header is None else read_exactly(int.from_bytes(header, "big"))


class WorkerProcess:
    """One ``python -m serve_app.workers`` child. Blocking; ``WorkerPool`` calls it from threads.

    ``warm_up`` (a ``module:function``) runs first; a child that does not answer it within
    START_TIMEOUT_S seconds is killed, and one whose warm-up raises is killed too: both raise
    ``ChildProcessError`` naming the cause, as a child that cannot start at all does, so that its
    caller never waits on a stuck start and never sees the warm-up's own exception as its own."""

    def __init__(self, warm_up: str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serve_app.workers"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        if warm_up is None:
            return
        limit_s = START_TIMEOUT_S
        try:
            self.call(warm_up, (), answer_within_s=limit_s)
        except BaseException as error:
            self.kill()
            if isinstance(error, TimeoutError):
                took = f"its warm-up ({warm_up}) took longer than {limit_s:g} s"
                raise ChildProcessError(f"could not start a helper process: {took}") from None
            if isinstance(error, ChildProcessError):
                raise ChildProcessError(
                    f"could not start a helper process: it exited during its warm-up ({warm_up})"
                ) from error
            if isinstance(error, Exception):
                raise ChildProcessError(
                    f"could not start a helper process: its warm-up ({warm_up}) failed:"
                    f" {type(error).__name__}: {error}"
                ) from error
            raise

    def call(self, function: str, args: tuple[Any, ...], answer_within_s: float | None = None) -> Any:
        """Run ``module:function(*args)`` in the child; re-raise its exception here.

        Raises ``ChildProcessError`` when the child died (killed on timeout, or crashed, also
        midway through its answer), also when that shows as a broken pipe on the next call to a
        worker that died idle. ``answer_within_s`` (seconds; only for a child's first call,
        whose stdout nothing has read yet): ``TimeoutError`` when the whole answer has not come
        by then, the child left running (the caller kills it). The wait is in this thread, so
        nothing else is started that could fail, or fire late."""
        module, _, name = function.partition(":")
        request = pickle.dumps((module, name, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_frame(self.proc.stdin, request)
            if answer_within_s is None:
                frame = _read_frame(self.proc.stdout)
            else:
                frame = _read_frame_within(self.proc.stdout.fileno(), answer_within_s)
        except TimeoutError:  # an OSError too, but not a dead child
            raise
        except OSError as error:  # BrokenPipeError, ConnectionResetError
            raise ChildProcessError(f"worker process for {function} exited") from error
        if frame is None:
            raise ChildProcessError(f"worker process for {function} exited")
        status, value = pickle.loads(frame)
        if status == "error":
            raise value
        return value

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()  # type: ignore[union-attr]


class WorkerPool:
    """``size`` worker processes; ``await pool.call("serve_app.x:f", args, timeout_s)``.

    A call waits for an idle worker, then runs in it. Past ``timeout_s`` (seconds; None: no
    limit) the worker is killed and replaced, and ``TimeoutError`` is raised; a worker that died
    is replaced too (``ChildProcessError``). Processes start on first use or ``start()``; each
    runs ``warm_up`` (a ``module:function``) before its first call, so that imports are not
    charged to a call's timeout.

    Each of the ``size`` slots is always in exactly one place: in the idle queue as a worker or
    as ``None`` (no process: the next caller starts one), or held by one call, start or
    replacement, which puts it back however that ends. A process that cannot start (too many open
    files, say) fails that caller only, with ``ChildProcessError`` (the router answers 503), and
    leaves its slot empty for the next; an earlier version left the queue empty for good and
    every later call waited forever. A caller that was already waiting when a start failed, and
    then finds an empty slot, gets that start's error at once, so a queue of callers behind a
    stuck start waits for one START_TIMEOUT_S, not one each; a caller that comes later starts a
    process afresh. After ``close()`` every call, waiting or new, raises ``ChildProcessError``
    (one whose process is starting once that start ends), and a worker still busy is killed
    when its call ends."""

    def __init__(self, size: int, warm_up: str | None = None) -> None:
        self.size = size
        self.warm_up = warm_up
        self._slots: asyncio.Queue[WorkerProcess | None] | None = None
        self._replacing: set[asyncio.Task] = set()
        self._closed = False
        # The latest failed start: (its number, its message). Set from the starting threads in
        # one assignment, read once per use: a tuple never seen half-written.
        self._failure_numbers = itertools.count(1)
        self._failure: tuple[int, str] = (0, "")

    def _queue(self) -> asyncio.Queue[WorkerProcess | None]:
        if self._slots is None:
            self._slots = asyncio.Queue()
            for _ in range(self.size):
                self._slots.put_nowait(None)
        return self._slots

    async def start(self) -> None:
        """Start a process in every idle empty slot now (raises what starting one raises)."""
        queue = self._queue()
        for _ in range(queue.qsize()):
            self._put(await self._fill(queue.get_nowait(), self._failure[0]))

    async def _fill(self, slot: WorkerProcess | None, seen_failure: int) -> WorkerProcess:
        """The worker in a slot the caller took from the queue, starting one in an empty slot.
        ``seen_failure``: the number of the latest failed start when the caller began to wait;
        a later one fails this caller at once with its message. Should the start fail, the slot
        goes back empty and the error is raised; should the caller be cancelled meanwhile, the
        slot goes back once the start has ended."""
        if slot is not None:
            return slot
        failure = self._failure
        if self._closed or failure[0] != seen_failure:
            self._put(None)
            raise ChildProcessError(CLOSED if self._closed else failure[1])
        spawning = asyncio.ensure_future(asyncio.to_thread(self._start_process))
        try:
            worker = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            spawning.add_done_callback(self._return_spawned)
            raise
        except BaseException:
            self._put(None)
            raise
        if self._closed:  # closed while it started
            self._put(worker)
            raise ChildProcessError(CLOSED)
        return worker

    def _start_process(self) -> WorkerProcess:
        """A new process; ``ChildProcessError`` when none can start (e.g. too many open files)."""
        try:
            return WorkerProcess(self.warm_up)
        except ChildProcessError as error:
            self._failure = (next(self._failure_numbers), str(error))
            raise
        except OSError as error:
            message = f"could not start a helper process: {error}"
            self._failure = (next(self._failure_numbers), message)
            raise ChildProcessError(message) from error

    def _return_spawned(self, spawning: asyncio.Future[WorkerProcess]) -> None:
        failed = spawning.cancelled() or spawning.exception() is not None
        self._put(None if failed else spawning.result())

    def _put(self, slot: WorkerProcess | None) -> None:
        """Give a slot back to the idle queue; once closed, a worker in it is killed first."""
        if self._closed and slot is not None:
            slot.kill()
            slot = None
        self._queue().put_nowait(slot)

    async def call(self, function: str, args: tuple[Any, ...], timeout_s: float | None = None) -> Any:
        if self._closed:
            raise ChildProcessError(CLOSED)
        seen_failure = self._failure[0]
        worker = await self._fill(await self._queue().get(), seen_failure)
        try:
            result = await asyncio.wait_for(asyncio.to_thread(worker.call, function, args), timeout_s)
        except (TimeoutError, ChildProcessError):
            self._replace_later(worker)
            raise
        except Exception:  # the function raised (an OSError too); the worker itself is fine
            self._put(worker)
            raise
        except BaseException:  # cancelled mid-call: the worker is still busy with it
            self._replace_later(worker)
            raise
        self._put(worker)
        return result

    def _replace_later(self, worker: WorkerProcess) -> None:
        """Kill ``worker`` and put a fresh one in its slot (``None`` if none starts), without
        making the caller wait."""

        async def replace() -> None:
            fresh: WorkerProcess | None = None
            try:
                await asyncio.to_thread(worker.kill)
                if not self._closed:
                    fresh = await asyncio.to_thread(self._start_process)
            except Exception as error:  # the next caller tries again, and gets the error itself
                logger.warning("a helper process could not be replaced: %s", error)
            finally:
                self._put(fresh)

        task = asyncio.get_running_loop().create_task(replace())
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    def close(self) -> None:
        """Kill every idle worker now and every busy one when its call ends; calls, waiting or
        new, raise ``ChildProcessError``. A start in flight is killed when it ends."""
        self._closed = True
        if self._slots is None:
            return
        for _ in range(self._slots.qsize()):
            self._put(self._slots.get_nowait())


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    while (frame := _read_frame(stdin)) is not None:
        module, name, args = pickle.loads(frame)
        try:
            if module != "serve_app" and not module.startswith("serve_app."):
                raise PermissionError(f"worker calls only serve_app functions, not {module}")
            reply: tuple[str, Any] = ("ok", getattr(importlib.import_module(module), name)(*args))
            payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            try:
                payload = pickle.dumps(("error", exc), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                payload = pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
        _write_frame(stdout, payload)


if __name__ == "__main__":
    # The protocol keeps the real stdout; anything the called code prints goes to stderr.
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _serve(sys.stdin.buffer, protocol_out)
