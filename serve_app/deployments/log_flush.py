"""A replica's log lines on disk within a second, and none lost when it stops.

In throughput mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``, which ``make serve`` sets) Ray Serve
keeps a replica's log records in a ``logging.handlers.MemoryHandler`` of 1,000 records
(``RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE``; ``configure_component_logger`` in Ray's
``serve/_private/logging_utils.py``) and writes them only when it is full or on an ERROR record.
A replica that logs little - its start, a drain, a warning about an engine - kept those lines in
memory for good, and a replica that stopped (Ctrl-C, a scale-down, a redeploy) took them with it:
after a normal Ctrl-C every replica log file was empty. ``LogFlusher`` writes the buffer out every
``FLUSH_INTERVAL_S``, once more when the replica stops, and every record at once after that; the
records are formatted and written when flushed, as Ray would have done when the buffer filled, so
what it costs is the same writes, sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers

SERVE_LOGGER = "ray.serve"  # ray.serve._private.constants.SERVE_LOGGER_NAME
FLUSH_INTERVAL_S = 1.0


def flush_serve_logs() -> None:
    """Write out what Ray Serve's logger in this process holds (a no-op where nothing is buffered)."""
    for handler in logging.getLogger(SERVE_LOGGER).handlers:
        with contextlib.suppress(Exception):  # a closed file at interpreter exit: nothing to save
            handler.flush()


class LogFlusher:
    """``flush_serve_logs`` every ``interval_s`` on the running loop; ``close`` flushes once more."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start flushing (idempotent; call from a coroutine)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            flush_serve_logs()

    def close(self) -> None:
        """Stop the periodic flush, write out what is left, and let every later record through
        at once: Ray logs its own last lines ("Graceful shutdown complete") after the replica's
        ``__del__``, and then ends the process without flushing."""
        if self._task is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed (a late __del__)
                self._task.cancel()
        flush_serve_logs()
        for handler in logging.getLogger(SERVE_LOGGER).handlers:
            if isinstance(handler, logging.handlers.MemoryHandler):
                handler.capacity = 1  # MemoryHandler.shouldFlush: a buffer of one flushes each record
