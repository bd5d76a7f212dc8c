"""A client's error is one INFO line in the model replica's log, not an ERROR with a traceback."""

from __future__ import annotations

import logging

from serve_app.deployments.client_errors import RAY_FAILED_MESSAGE, ClientErrorsAsInfo
from serve_app.errors import ContextLengthError, EngineError


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def failed_request(error: Exception) -> logging.LogRecord:
    logger = logging.getLogger(f"test.client_errors.{type(error).__name__}")
    logger.propagate = False
    logger.addFilter(ClientErrorsAsInfo())
    records = Records()
    logger.addHandler(records)
    try:
        raise error
    except Exception:
        logger.exception(RAY_FAILED_MESSAGE)  # what Ray Serve's replica does
    (record,) = records.records
    return record


def test_a_client_error_is_logged_as_one_info_line():
    record = failed_request(ContextLengthError("the prompt is too long", param="messages"))
    assert record.levelname == "INFO" and record.exc_info is None
    assert record.getMessage() == (
        "Request refused (ContextLengthError, param messages): the prompt is too long"
    )


def test_a_server_error_keeps_its_error_and_traceback():
    record = failed_request(EngineError("the engine failed"))
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert record.getMessage() == RAY_FAILED_MESSAGE


def test_ray_serve_still_logs_failed_requests_with_that_message():
    import inspect

    from ray.serve._private import replica

    assert f'logger.exception("{RAY_FAILED_MESSAGE}")' in inspect.getsource(replica)
