"""deployments/log_flush.py: Ray Serve's buffered replica log lines reach the file."""

import asyncio
import logging

import pytest
from ray.serve._private.logging_utils import configure_component_logger
from ray.serve.schema import LoggingConfig

from serve_app.deployments.log_flush import SERVE_LOGGER, LogFlusher


@pytest.fixture
def replica_log(tmp_path):
    """Ray Serve's own throughput-mode replica logger: a 1,000-record buffer before the file
    (RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE in throughput mode)."""
    logger = logging.getLogger(SERVE_LOGGER)
    saved = (logger.handlers[:], logger.propagate, logger.level)
    configure_component_logger(
        component_name="model",
        component_id="replica-1",
        logging_config=LoggingConfig(logs_dir=str(tmp_path), enable_access_log=False),
        buffer_size=1000,
        max_bytes=10**6,
        backup_count=1,
    )
    yield logger, tmp_path / "model_replica-1.log"
    for handler in logger.handlers:
        handler.close()
    logger.handlers, logger.propagate, level = saved
    logger.setLevel(level)


def test_lines_reach_the_file_within_the_interval_on_close_and_after(replica_log):
    logger, path = replica_log

    async def run():
        flusher = LogFlusher(interval_s=0.05)
        flusher.start()
        logger.info("model qwen ready in 1.0 s")
        assert "ready in" not in path.read_text()  # what Ray alone would keep until 1,000 records
        for _ in range(100):
            await asyncio.sleep(0.01)
            if "ready in" in path.read_text():
                break
        assert "model qwen ready in 1.0 s" in path.read_text()
        logger.info("model qwen stopped")
        flusher.close()  # the replica stopping: its last lines go out
        assert "model qwen stopped" in path.read_text()
        logger.info("Graceful shutdown complete; replica exiting.")  # Ray's, after __del__
        assert "Graceful shutdown complete" in path.read_text()

    asyncio.run(run())
