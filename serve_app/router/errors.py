"""The one place exceptions become HTTP status codes and OpenAI error JSON.

``{"error": {"message", "type", "param", "code"}}``, as OpenAI and vLLM's
``create_error_response`` shape it. Routes stay thin and raise; this module answers.

Messages show no internals: a client error (4xx) says what to fix; a server error (5xx) says
what happened in our words plus a request id, and the log line with the traceback carries the
same id. Headers that belong to a status (405's ``Allow``, 503's ``Retry-After``) are kept.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from fastapi.exceptions import RequestValidationError
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from serve_app.errors import (
    AuthenticationError,
    ContextLengthError,
    EngineDeadError,
    EngineError,
    MetricsUnavailableError,
    ModelNotAllowedError,
    ModelNotFoundError,
    ModelUnavailableError,
    RequestError,
    RequestTimeoutError,
    RequestTooLargeError,
    unwrap,
)

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str
    code: str | None = None


# Most specific first: the first matching class wins.
ERROR_TABLE: list[tuple[type[BaseException], ErrorKind]] = [
    (AuthenticationError, ErrorKind(401, "AuthenticationError", "invalid_api_key")),
    (ModelNotAllowedError, ErrorKind(403, "PermissionDeniedError", "model_not_allowed")),
    (ModelNotFoundError, ErrorKind(404, "NotFoundError", "model_not_found")),
    (RequestTooLargeError, ErrorKind(413, "RequestTooLargeError", "request_too_large")),
    (RequestTimeoutError, ErrorKind(408, "RequestTimeoutError", "request_timeout")),
    (ContextLengthError, ErrorKind(400, "BadRequestError", "context_length_exceeded")),
    (RequestError, ErrorKind(400, "BadRequestError", "invalid_request")),
    (BackPressureError, ErrorKind(503, "ServiceUnavailableError", "overloaded")),
    (ModelUnavailableError, ErrorKind(503, "ServiceUnavailableError", "model_unavailable")),
    (EngineDeadError, ErrorKind(503, "ServiceUnavailableError", "engine_dead")),
    (RayActorError, ErrorKind(503, "ServiceUnavailableError", "replica_unavailable")),
    (DeploymentUnavailableError, ErrorKind(503, "ServiceUnavailableError", "replica_unavailable")),
    (MetricsUnavailableError, ErrorKind(503, "ServiceUnavailableError", "metrics_unavailable")),
    (EngineError, ErrorKind(500, "InternalServerError", "engine_error")),
    # serve_app.workers: a helper process (large bodies, request chat templates) died or could
    # not start, e.g. with too many open files; the pool starts another for the next request.
    (ChildProcessError, ErrorKind(503, "ServiceUnavailableError", "helper_unavailable")),
]
# What a client reads for a server-side error; the details go to the log under the request id.
SERVER_MESSAGES = {
    "overloaded": "the model is overloaded: every replica is busy and its queue is full; retry later",
    "engine_dead": "the model's engine stopped; its replica is being replaced; retry later",
    "replica_unavailable": "the model's replica stopped or is unreachable; retry later",
    "model_unavailable": "the model has no replica running yet (it is starting); retry later",
    "engine_error": "the engine failed while generating",
    "metrics_unavailable": "the cluster's metrics could not be gathered; retry later",
    "helper_unavailable": "a helper process of the server stopped or could not start; retry later",
    "internal_error": "internal error",
}
INTERNAL = ErrorKind(500, "InternalServerError", "internal_error")
MAX_PROBLEMS = 5  # validation problems listed in one message
RETRY_AFTER_S = 1  # 503s other than overload (a replica being replaced); overload's is estimated


def _clean(text: str | None, limit: int = 2000) -> str | None:
    """Text safe to put in a JSON response: no lone surrogates, at most ``limit`` characters."""
    if text is None:
        return None
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


def error_body(message: str, kind: ErrorKind, param: str | None = None) -> dict:
    """The OpenAI error object, ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {
            "message": _clean(message),
            "type": kind.type,
            "param": _clean(param, 200),
            "code": kind.code,
        }
    }


def error_response(error: BaseException, retry_after_s: int | None = None) -> JSONResponse:
    """Any exception -> its status and OpenAI error JSON (the one mapping; see ERROR_TABLE).

    Client errors (``RequestError``) keep their message and ``param``. Everything else is
    answered with a fixed message and a request id; the log line has the same id and the
    traceback. Unknown exception types are 500 ``internal_error``. A 503 carries
    ``Retry-After``: ``retry_after_s`` when given (the router's estimate for overload,
    router/overload.py), else RETRY_AFTER_S."""
    error = unwrap(error)
    kind = next((k for cls, k in ERROR_TABLE if isinstance(error, cls)), INTERNAL)
    if isinstance(error, RequestError):
        # The body is left unread: the connection cannot carry another request (RFC 9110 15.5.9
        # and 15.5.14), and a stalled upload must not keep it open.
        close = {"Connection": "close"} if kind.status in (408, 413) else None
        return JSONResponse(error_body(str(error), kind, error.param), kind.status, headers=close)
    request_id = uuid.uuid4().hex
    headers = {}
    if kind.status == 503:
        headers["Retry-After"] = str(retry_after_s or RETRY_AFTER_S)
        logger.warning("request %s answered %d (%s): %s", request_id, kind.status, kind.code, error)
    else:
        logger.error("request %s failed (%s)", request_id, kind.code, exc_info=error)
    # Our own 503s (a model that cannot take requests, /metrics) say which and why in our words.
    ours = (ModelUnavailableError, MetricsUnavailableError)
    known = str(error) if isinstance(error, ours) and str(error) else None
    message = f"{known or SERVER_MESSAGES[kind.code or 'internal_error']}; request id {request_id}"
    return JSONResponse(error_body(message, kind), kind.status, headers=headers)


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the first bad field."""
    problems = list(exc.errors())
    first = problems[0] if problems else {}
    if first.get("type") == "json_invalid":
        message, param = "request body is not valid JSON", None
    else:
        field = _location(first)
        unique = list(dict.fromkeys(_describe(p) for p in problems))
        details = "; ".join(unique[:MAX_PROBLEMS])
        if len(unique) > MAX_PROBLEMS:
            details += f"; and {len(unique) - MAX_PROBLEMS} more"
        message, param = f"invalid request: {details}", field or None
    return JSONResponse(error_body(message, ErrorKind(400, "BadRequestError", "invalid_request"), param), 400)


def _location(problem: dict) -> str:
    """The field path a client wrote (``messages.0.content``): without FastAPI's ``body`` and
    without pydantic's union-member tags (``str``, ``list[int]``, ``function-wrap[...]``)."""
    parts = []
    for part in problem.get("loc", ()):
        text = str(part)
        if text == "body" or "[" in text or text in _UNION_TAGS:
            continue
        parts.append(text)
    return ".".join(parts)


_UNION_TAGS = frozenset(
    {"str", "int", "float", "bool", "dict", "list", "none", "constrained-int", "constrained-str"}
)


def _describe(problem: dict) -> str:
    loc = _location(problem)
    msg = str(problem.get("msg", "invalid"))
    if problem.get("type") == "extra_forbidden":
        msg = "unknown field: not an OpenAI or vLLM request field this server implements (docs/openai-api.md)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{loc}: {msg}" if loc else msg


HTTP_TYPES = {404: "NotFoundError", 405: "MethodNotAllowedError", 413: "RequestTooLargeError"}


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (unknown route 404, wrong method 405 ...), keeping their headers."""
    if exc.status_code >= 500:
        return error_response(exc)
    kind = ErrorKind(exc.status_code, HTTP_TYPES.get(exc.status_code, "BadRequestError"))
    return JSONResponse(error_body(str(exc.detail), kind), exc.status_code, headers=exc.headers)


def replica_gone(error: BaseException) -> bool:
    """Whether ``error`` says the replica (or its engine) is gone, not that the request was bad:
    the request can be sent to another replica."""
    error = unwrap(error)
    return isinstance(error, (RayActorError, EngineDeadError, DeploymentUnavailableError))


def sse_error(error: BaseException) -> str:
    """An error after the stream began: one SSE event with the error body, then [DONE]."""
    return f"data: {error_response(error).body.decode()}\n\ndata: [DONE]\n\n"
