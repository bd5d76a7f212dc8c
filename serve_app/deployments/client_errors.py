"""Client errors in a model replica's log: one line, not an ERROR with a traceback.

Ray Serve logs every exception a replica method raises as ``logger.exception("Request failed.")``
(ray/serve/_private/replica.py, ``_handle_errors_and_metrics``, Ray 2.60). A model replica raises
``RequestError`` for what the client got wrong (a prompt too long, an unknown
``chat_template_kwargs`` key), which the router answers with a 4xx: logged that way, each such
request left an ERROR and a full traceback, as a crash would. Under ``make serve``'s throughput
mode an ERROR also flushes the replica's buffered log at once.
"""

from __future__ import annotations

import logging

from serve_app.errors import RequestError

RAY_FAILED_MESSAGE = "Request failed."


class ClientErrorsAsInfo(logging.Filter):
    """Rewrites Ray Serve's "Request failed." record for a ``RequestError`` as an INFO line that
    names the error; every other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.msg == RAY_FAILED_MESSAGE and isinstance(error, RequestError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "Request refused (%s, param %s): %s"
            record.args = (type(error).__name__, error.param, error)
            record.exc_info = record.exc_text = None
        return True


def install(logger_name: str = "ray.serve") -> None:
    """Adds the filter to ``logger_name`` once (a replica process may build several servers)."""
    target = logging.getLogger(logger_name)
    if not any(isinstance(f, ClientErrorsAsInfo) for f in target.filters):
        target.addFilter(ClientErrorsAsInfo())
