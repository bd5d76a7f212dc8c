"""Every error this application raises on purpose, in one hierarchy.

    ServeAppError
    ├── RegistryError            models.yaml is invalid; fix the file and start again
    │   └── MaxModelLenError         max_model_len exceeds what the checkpoint supports (vLLM's rule)
    ├── CheckpointLoadError      a checkpoint's tensors don't fit its config; fix or re-export it
    ├── PreflightFailed          a model failed preflight; the report says what to fix
    ├── ModelUnavailableError    no replica of the model came up in time; retry later (503)
    ├── MetricsUnavailableError  /metrics could not be merged without stalling the router (503)
    ├── RequestError             the client's request is wrong; it can retry with a fixed one (4xx)
    │   ├── InvalidRequestError      a field is missing or out of range            -> 400
    │   ├── ContextLengthError       prompt (+ max_tokens) exceeds the context    -> 400
    │   ├── ChatTemplateMissingError chat request to a model without a template   -> 400
    │   ├── ChatTemplateError        the chat template refused, failed or ran out of time -> 400
    │   ├── RequestTooLargeError     the body is larger than the router accepts   -> 413
    │   ├── RequestTimeoutError      the body did not arrive in time              -> 408
    │   ├── ModelNotFoundError       no served model has that name                -> 404
    │   ├── AuthenticationError      API keys are on and the key is missing or wrong -> 401
    │   └── ModelNotAllowedError     the key may not use the requested model       -> 403
    └── EngineError              the engine failed
        ├── EngineNotStartedError    a call reached an engine before start(); a programming error
        ├── EngineGenerateError      one request failed; the engine is still fine (500)
        └── EngineDeadError          the engine is gone; the replica must be replaced (503)

Exceptions cross Ray process boundaries, so each keeps all of its state in ``args``
(Ray re-creates them by pickling).
"""

from __future__ import annotations


class ServeAppError(Exception):
    """Base of the hierarchy. ``param`` names the offending field where there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class RegistryError(ServeAppError):
    """models.yaml (or the args given to build_app) failed validation."""


class MaxModelLenError(RegistryError):
    """A model's max_model_len is past its checkpoint's limit, which vLLM refuses at start
    (vllm/config/model.py ``_get_and_verify_max_len``); raised by engines/context_length.py.
    ``fix`` says what to change (the registry, or VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)."""

    def __init__(self, message: str, param: str | None = "max_model_len", fix: str = "") -> None:
        Exception.__init__(self, message, param, fix)
        self.message = message
        self.param = param
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


class CheckpointLoadError(ServeAppError):
    """A checkpoint's tensors do not fit the model its config.json describes, or are unreadable."""


class PreflightFailed(ServeAppError):
    """A model failed a preflight check and its policy is to stop the app."""


class ModelUnavailableError(ServeAppError):
    """The model has no running replica (scaled to zero, starting, being replaced) and none came
    up within its ``cold_start_timeout_s``. The client can retry later (503 + Retry-After)."""


class MetricsUnavailableError(ServeAppError):
    """``GET /metrics`` could not merge the cluster's series without stalling the router: the
    merge outran its time limit, or its helper process failed and the text is too large to merge
    in the router's own process (router/metrics.py). 503: the next scrape tries again."""


class RequestError(ServeAppError):
    """The request is wrong; the client can fix it and retry."""


class InvalidRequestError(RequestError):
    """A field is missing, has the wrong type or is out of range."""


class ContextLengthError(RequestError):
    """The prompt, or prompt plus max_tokens, does not fit the model's context window."""


class ChatTemplateMissingError(RequestError):
    """A chat request reached a model whose tokenizer has no chat template."""


class ChatTemplateError(RequestError):
    """The chat template could not be rendered for this request: a kwarg it does not accept, a
    template that failed (syntax error, ``raise_exception``) or one that ran past its time budget."""


class RequestTooLargeError(RequestError):
    """The request body is larger than the router's ``max_request_body_bytes`` (HTTP 413)."""


class RequestTimeoutError(RequestError):
    """The request body did not arrive within the router's ``request_body_timeout_s`` (HTTP 408)."""


class ModelNotFoundError(RequestError):
    """The ``model`` field names no served model (nor alias)."""


class AuthenticationError(RequestError):
    """API keys are configured and the request has no ``Authorization: Bearer`` key, or a wrong one."""


class ModelNotAllowedError(RequestError):
    """The request's key is valid but its allow-list does not include the requested model."""


class EngineError(ServeAppError):
    """The engine failed."""


class EngineNotStartedError(EngineError):
    """A call reached the engine before ``start()`` finished (a programming error)."""


class EngineGenerateError(EngineError):
    """One request failed inside the engine; other requests and the engine are fine."""


class EngineDeadError(EngineError):
    """The engine died. The replica reports unhealthy so Ray Serve replaces it."""


def unwrap(error: BaseException) -> BaseException:
    """Return the original exception behind Ray's wrappers (RayTaskError keeps it as ``cause``)."""
    seen = 0
    while seen < 8:
        cause = getattr(error, "cause", None)
        if not isinstance(cause, BaseException) or cause is error:
            return error
        error = cause
        seen += 1
    return error
