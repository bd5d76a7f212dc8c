"""serve_app/workers.py's pool of helper processes (large request bodies, request chat templates,
/metrics' merge): a process that cannot start, dies, or is abandoned mid-start never leaves the
pool waiting forever, and the pool never holds more processes than its size."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from serve_app import workers
from serve_app.workers import WorkerPool, WorkerProcess
from tests.processes import running

CHEAP = "serve_app.router.metrics_merge:merge"  # merge([]) is b"": a call that does nothing
CALL_LIMIT_S = 30  # a call that has not answered by then waits forever


_earlier: set[int] = set()  # helpers of earlier tests' pools, still running (see the fixture)


@pytest.fixture(autouse=True)
def _only_this_tests_helpers() -> None:
    """In the whole suite this process has other children: a Ray cluster, and the helpers of
    pools that earlier tests used in-process and never closed. ``_children`` leaves those out."""
    _earlier.clear()
    _earlier.update(_children())


def _children() -> set[int]:
    """This process's running helper processes (``-m serve_app.workers``, stand-ins from
    ``_fake_python`` too) that were not running when the test began."""
    found = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as children:
                found |= {int(pid) for pid in children.read().split()}
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return {pid for pid in found if running(pid) and _is_helper(pid)} - _earlier


def _is_helper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
    except OSError:  # it has just ended
        return False
    return b"serve_app.workers" in argv


def _fake_python(tmp_path, name: str, body: str) -> str:
    """An executable that stands in for ``python -m serve_app.workers``: ``body`` runs with
    ``stdin``/``stdout`` (binary) and ``frame(n)`` (the 8-byte length header) defined."""
    script = tmp_path / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        "stdin, stdout = sys.stdin.buffer, sys.stdout.buffer\n"
        "def frame(n):\n    return n.to_bytes(8, 'big')\n" + body
    )
    script.chmod(0o755)
    return str(script)


async def _call(pool: WorkerPool) -> bytes:
    return await asyncio.wait_for(pool.call(CHEAP, ([],)), CALL_LIMIT_S)


def test_a_process_that_cannot_start_fails_its_caller_and_not_the_next(monkeypatch):
    """Too many open files, or a missing interpreter: the first version left the pool's queue
    empty, and every later call waited forever."""

    async def scenario() -> None:
        pool = WorkerPool(1)
        monkeypatch.setattr(sys, "executable", "/nonexistent/python")
        for _ in range(3):
            with pytest.raises(ChildProcessError, match=r"could not start a helper process: .* No such file"):
                await _call(pool)
        monkeypatch.undo()
        assert await _call(pool) == b""
        pool.close()

    asyncio.run(scenario())


def test_a_worker_killed_mid_call_whose_replacement_cannot_start(monkeypatch):
    async def scenario() -> None:
        pool = WorkerPool(1)
        assert await _call(pool) == b""
        worker = pool._queue()._queue[0]  # the idle worker
        monkeypatch.setattr(sys, "executable", "/nonexistent/python")
        os.kill(worker.proc.pid, signal.SIGKILL)
        with pytest.raises((ChildProcessError, OSError)):
            await _call(pool)
        await asyncio.gather(*pool._replacing)  # its replacement failed to start
        with pytest.raises(ChildProcessError, match="could not start a helper process"):
            await _call(pool)
        monkeypatch.undo()
        assert await _call(pool) == b""
        pool.close()

    asyncio.run(scenario())


def test_a_caller_cancelled_while_its_process_starts_leaves_it_to_the_next(monkeypatch):
    started: list[int] = []

    class SlowStart(WorkerProcess):
        def __init__(self, warm_up: str | None = None) -> None:
            time.sleep(0.5)  # a slow fork and exec
            super().__init__(warm_up)
            started.append(self.proc.pid)

    monkeypatch.setattr(workers, "WorkerProcess", SlowStart)

    async def scenario() -> None:
        pool = WorkerPool(1)
        first = asyncio.ensure_future(pool.call(CHEAP, ([],)))
        await asyncio.sleep(0.2)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await _call(pool) == b""
        assert len(started) == 1, "the next call started a second process instead of the first's"
        pool.close()

    asyncio.run(scenario())


def test_the_pool_never_holds_more_processes_than_its_size():
    async def scenario() -> set[int]:
        pool = WorkerPool(2)
        await pool.start()
        await pool.start()  # already full: starts nothing
        calls = [asyncio.ensure_future(pool.call(CHEAP, ([],), 30)) for _ in range(20)]
        for call in calls[::3]:
            call.cancel()  # abandoned mid-call: that worker is replaced
        await asyncio.gather(*calls, return_exceptions=True)
        await asyncio.gather(*pool._replacing)
        assert await asyncio.gather(*(_call(pool) for _ in range(4))) == [b""] * 4
        alive = _children()
        pool.close()
        return alive

    before = _children()
    alive = asyncio.run(scenario()) - before
    assert 1 <= len(alive) <= 2, alive


def test_a_worker_that_died_idle_fails_the_next_call_as_a_dead_helper():
    """It showed as BrokenPipeError, an OSError the router answered with 500; it is the same
    dead helper as one that dies mid-call (503 helper_unavailable), and the call after works."""

    async def scenario() -> None:
        pool = WorkerPool(1)
        assert await _call(pool) == b""
        worker = pool._queue()._queue[0]
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        with pytest.raises(ChildProcessError, match=r"worker process for .* exited"):
            await pool.call(CHEAP, ([],))
        assert await _call(pool) == b""
        pool.close()

    asyncio.run(scenario())


def test_an_error_the_function_raises_keeps_its_worker():
    """A PermissionError (an OSError) from the call itself is the caller's, not a dead helper's."""

    async def scenario() -> None:
        pool = WorkerPool(1)
        assert await _call(pool) == b""
        pid = pool._queue()._queue[0].proc.pid
        with pytest.raises(PermissionError, match="worker calls only serve_app functions, not os"):
            await pool.call("os:getcwd", ())
        assert await _call(pool) == b""
        assert pool._queue()._queue[0].proc.pid == pid
        pool.close()

    asyncio.run(scenario())


def test_a_warm_up_that_raises_is_a_helper_that_cannot_start_and_names_the_cause():
    """It used to reach the caller as the warm-up's own exception, which the router answered 500."""

    async def scenario() -> None:
        pool = WorkerPool(1, warm_up="serve_app.no_such_module:warm_up")
        message = (
            r"could not start a helper process: its warm-up \(serve_app.no_such_module:warm_up\) failed:"
            r" ModuleNotFoundError: No module named 'serve_app.no_such_module'"
        )
        with pytest.raises(ChildProcessError, match=message):
            await _call(pool)
        assert _children() == set()  # the failed process is not left running
        pool.close()

    asyncio.run(scenario())


def test_a_warm_up_that_never_ends_is_killed_at_the_start_limit(monkeypatch, tmp_path):
    """A stuck start (an import that blocks, a child that never answers) used to hold its caller
    and every later one forever."""
    stuck = _fake_python(tmp_path, "stuck", "time.sleep(600)\n")  # reads nothing, answers nothing

    async def scenario() -> None:
        pool = WorkerPool(1, warm_up="serve_app.deployments.template_render:warm_up")
        monkeypatch.setattr(sys, "executable", stuck)
        monkeypatch.setattr(workers, "START_TIMEOUT_S", 1.0)
        started = time.monotonic()
        message = r"its warm-up \(serve_app.deployments.template_render:warm_up\) took longer than 1 s"
        with pytest.raises(ChildProcessError, match=message):
            await _call(pool)
        assert time.monotonic() - started < 10
        assert _children() == set()
        monkeypatch.undo()
        assert await _call(pool) == b""  # the next caller starts a working process in the slot
        pool.close()

    asyncio.run(scenario())


def test_after_close_calls_fail_at_once_and_a_busy_worker_ends_with_its_call():
    """close() used to take the idle slots away for good: a call after it, or one waiting for
    the busy worker, waited forever; and the busy worker outlived the pool."""
    from tests.router.test_metrics_scrape import big_agent

    slow = ([big_agent(1500)],)  # a merge of some 3 MB: about a second

    async def scenario() -> tuple[bytes, BaseException | bytes]:
        pool = WorkerPool(1)
        await pool.start()
        busy = asyncio.ensure_future(pool.call("serve_app.router.metrics_merge:merge", slow))
        waiting = asyncio.ensure_future(pool.call(CHEAP, ([],)))
        await asyncio.sleep(0.2)
        assert len(_children()) == 1
        pool.close()
        closed = r"the server's helper processes are shut down \(the replica is stopping\)"
        with pytest.raises(ChildProcessError, match=closed):
            await asyncio.wait_for(waiting, CALL_LIMIT_S)
        with pytest.raises(ChildProcessError, match=closed):
            await asyncio.wait_for(pool.call(CHEAP, ([],)), CALL_LIMIT_S)
        body = await asyncio.wait_for(busy, CALL_LIMIT_S)  # the call in flight still gets its answer
        return body, _children()

    before = _children()
    body, after = asyncio.run(scenario())
    assert body.startswith(b"# HELP vllm:time_to_first_token_seconds")
    assert after - before == set()


def test_callers_queued_behind_a_stuck_start_fail_with_it_not_one_start_limit_each(monkeypatch, tmp_path):
    """Each queued caller used to take the empty slot and wait out a start of its own: the 8th of
    8 callers on 2 slots waited 4 start limits (4 minutes at the real 60 s) for its 503."""
    stuck = _fake_python(tmp_path, "stuck", "time.sleep(600)\n")  # reads nothing, answers nothing

    async def scenario() -> list[float]:
        pool = WorkerPool(2, warm_up="serve_app.deployments.template_render:warm_up")
        monkeypatch.setattr(sys, "executable", stuck)
        monkeypatch.setattr(workers, "START_TIMEOUT_S", 1.0)
        started = time.monotonic()

        async def one() -> float:
            with pytest.raises(ChildProcessError, match=r"took longer than 1 s"):
                await _call(pool)
            return time.monotonic() - started

        waited = await asyncio.gather(*(one() for _ in range(8)))
        monkeypatch.undo()
        assert await _call(pool) == b""  # a later caller starts afresh
        pool.close()
        return waited

    waited = asyncio.run(scenario())
    assert max(waited) < 1.9, waited
    assert _children() == set()


def test_a_helper_that_dies_midway_through_its_answer_is_a_dead_helper_and_not_reused(monkeypatch, tmp_path):
    """A truncated answer was unpickled as a function's error (500) and the dead worker went back
    to the queue, to fail the next caller too."""
    dies = _fake_python(
        tmp_path, "dies", "stdin.read(8); stdout.write(frame(100) + b'abc'); stdout.flush()\n"
    )

    async def scenario() -> None:
        pool = WorkerPool(1)
        monkeypatch.setattr(sys, "executable", dies)
        with pytest.raises(ChildProcessError, match=r"worker process for .* exited"):
            await _call(pool)
        monkeypatch.undo()
        await asyncio.gather(*pool._replacing)
        assert await _call(pool) == b""
        pool.close()

    asyncio.run(scenario())


def test_a_warm_up_answer_cut_off_midway_is_a_stuck_start(monkeypatch, tmp_path):
    """The time limit covers the whole answer, not its first byte: a child that wrote a header
    and stopped held its caller forever."""
    stops = _fake_python(
        tmp_path, "stops", "stdin.read(8); stdout.write(frame(100)); stdout.flush(); time.sleep(600)\n"
    )

    async def scenario() -> None:
        pool = WorkerPool(1, warm_up="serve_app.deployments.template_render:warm_up")
        monkeypatch.setattr(sys, "executable", stops)
        monkeypatch.setattr(workers, "START_TIMEOUT_S", 1.0)
        started = time.monotonic()
        with pytest.raises(ChildProcessError, match=r"took longer than 1 s"):
            await _call(pool)
        assert time.monotonic() - started < 10
        pool.close()

    asyncio.run(scenario())


def test_a_helper_starts_when_the_server_holds_over_1024_descriptors():
    """select() cannot watch a descriptor numbered 1024 or more: with that many open, every
    start failed its warm-up, and each request that needed a helper got 503."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, 1200) if soft != resource.RLIM_INFINITY else soft, hard)
    )
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]
    try:

        async def scenario() -> None:
            pool = WorkerPool(1, warm_up="serve_app.deployments.template_render:warm_up")
            assert await _call(pool) == b""
            assert pool._queue()._queue[0].proc.stdout.fileno() >= 1024
            pool.close()

        asyncio.run(scenario())
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_new_caller_after_a_failed_start_starts_afresh(monkeypatch):
    """After one failed start, new callers got its error for 0.5 s even with the cause gone and
    a worker idle: every other request failed."""

    async def scenario() -> None:
        pool = WorkerPool(2)
        assert await _call(pool) == b""  # one slot has a worker
        monkeypatch.setattr(sys, "executable", "/nonexistent/python")
        with pytest.raises(ChildProcessError, match="could not start a helper process"):
            await asyncio.gather(_call(pool), _call(pool))  # the second takes the empty slot
        monkeypatch.undo()
        for _ in range(4):
            assert await _call(pool) == b""
        pool.close()

    asyncio.run(scenario())
