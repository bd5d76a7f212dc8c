"""deployments/log_flush.py: Ray Serve's buffered replica log lines reach the file."""

import asyncio
import logging
import logging.handlers

from serve_app.deployments.log_flush import SERVE_LOGGER, LogFlusher


def _buffered_logger(path):
    """Ray Serve's throughput-mode replica logger: a 1,000-record MemoryHandler before the file
    (ray/serve/_private/logging_utils.py, configure_component_logger)."""
    logger = logging.getLogger(SERVE_LOGGER)
    saved = (logger.handlers[:], logger.propagate, logger.level)
    target = logging.FileHandler(path)
    logger.handlers = [logging.handlers.MemoryHandler(1000, flushLevel=logging.ERROR, target=target)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, saved, target


def test_lines_reach_the_file_within_the_interval_and_on_close(tmp_path):
    path = tmp_path / "replica.log"
    logger, saved, target = _buffered_logger(path)

    async def run():
        flusher = LogFlusher(interval_s=0.05)
        flusher.start()
        logger.info("model qwen ready in 1.0 s")
        assert path.read_text() == ""  # what Ray alone would leave until 1,000 records
        await asyncio.sleep(0.2)
        assert path.read_text() == "model qwen ready in 1.0 s\n"
        flusher.close()  # the replica stopping: the last lines go out too
        logger.info("draining")
        flusher.close()
        assert path.read_text().endswith("draining\n")

    try:
        asyncio.run(run())
    finally:
        logger.handlers, logger.propagate, level = saved
        logger.setLevel(level)
        target.close()
