"""The one place exceptions become HTTP status codes and OpenAI error JSON.

``{"error": {"message", "type", "param", "code"}}``, as OpenAI and vLLM's
``create_error_response`` shape it. Routes stay thin and raise; this module answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi.exceptions import RequestValidationError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from serve_app.errors import (
    ContextLengthError,
    EngineDeadError,
    EngineError,
    ModelNotFoundError,
    OverloadedError,
    RequestError,
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
    (ModelNotFoundError, ErrorKind(404, "NotFoundError", "model_not_found")),
    (ContextLengthError, ErrorKind(400, "BadRequestError", "context_length_exceeded")),
    (RequestError, ErrorKind(400, "BadRequestError", "invalid_request")),
    (OverloadedError, ErrorKind(503, "ServiceUnavailableError", "overloaded")),
    (BackPressureError, ErrorKind(503, "ServiceUnavailableError", "overloaded")),
    (EngineDeadError, ErrorKind(503, "ServiceUnavailableError", "engine_dead")),
    (EngineError, ErrorKind(500, "InternalServerError", "engine_error")),
]
INTERNAL = ErrorKind(500, "InternalServerError", "internal_error")
RETRY_AFTER_S = 1


def error_body(message: str, kind: ErrorKind, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind.type, "param": param, "code": kind.code}}


def error_response(error: BaseException) -> JSONResponse:
    error = unwrap(error)
    kind = next((k for cls, k in ERROR_TABLE if isinstance(error, cls)), None)
    if kind is None:
        logger.exception("unexpected error while serving a request", exc_info=error)
        return JSONResponse(error_body(f"internal error: {type(error).__name__}: {error}", INTERNAL), 500)
    headers = {}
    message = str(error)
    if kind.status == 503:
        retry = getattr(error, "retry_after_s", None) or RETRY_AFTER_S
        headers["Retry-After"] = str(max(1, round(retry)))
        if isinstance(error, BackPressureError):
            message = "the model is overloaded: every replica is busy and its queue is full; retry later"
    return JSONResponse(
        error_body(message, kind, getattr(error, "param", None)), kind.status, headers=headers
    )


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the first bad field."""
    problems = exc.errors()
    first = problems[0] if problems else {}
    if first.get("type") == "json_invalid":
        message, param = "request body is not valid JSON", None
    else:
        field = _location(first)
        details = "; ".join(dict.fromkeys(_describe(p) for p in problems))
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


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    kind = ErrorKind(exc.status_code, "NotFoundError" if exc.status_code == 404 else "BadRequestError")
    return JSONResponse(error_body(str(exc.detail), kind), exc.status_code)


def sse_error(error: BaseException) -> str:
    """An error after the stream began: one SSE event with the error body, then [DONE]."""
    return f"data: {error_response(error).body.decode()}\n\ndata: [DONE]\n\n"
