"""Request limits, checked where a request arrives, before it can block anything.

Three layers, cheapest first:

1. ``BodyLimits`` (ASGI middleware): the body in bytes, from ``Content-Length`` and again
   while the body streams in (chunked uploads) -> 413; the time it takes to arrive -> 408.
2. ``check_document``: one walk over the parsed JSON, before pydantic sees it: nesting depth,
   text that cannot be encoded as UTF-8 (lone UTF-16 surrogates, in keys or values), the number of
   messages, of content parts per message and of prompt items, and the prompt's characters -> 400
   with ``param`` naming the field path (``messages.3.content``).
3. The request models' own validation (``router/protocol.py``).

``parse_request`` runs 2 and 3. Bodies up to ``INLINE_PARSE_BYTES`` are parsed on the event loop
(a few hundred microseconds); larger ones in a worker process (``serve_app.workers``), because
CPython's json parser and pydantic-core hold the GIL for the whole call, so a thread would still
stall every other request on the router.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel, ValidationError

from serve_app.errors import InvalidRequestError, RequestTimeoutError, RequestTooLargeError
from serve_app.registry.models import RouterSpec
from serve_app.router.errors import error_response

INLINE_PARSE_BYTES = 64 * 1024
ANY = "*"  # a list index in a path pattern


@dataclass(frozen=True)
class RequestLimits:
    """The router's limits: the registry's ``router:`` fields of the same names, where the
    defaults and their reasons live (``RouterSpec``; README's reference table)."""

    max_request_body_bytes: int
    request_body_timeout_s: float
    max_messages: int
    max_content_parts: int
    max_prompt_chars: int
    max_prompt_token_ids: int
    max_json_depth: int

    @classmethod
    def from_spec(cls, spec: RouterSpec) -> RequestLimits:
        return cls(**{f.name: getattr(spec, f.name) for f in fields(cls)})


# Path pattern -> (limit attribute, what is counted). Lists only; counted before they are walked.
COUNT_RULES: dict[tuple[str, ...], tuple[str, str]] = {
    ("messages",): ("max_messages", "messages"),
    ("messages", ANY, "content"): ("max_content_parts", "content parts"),
    ("prompt",): ("max_prompt_token_ids", "prompt items"),
}
# Path patterns whose strings are prompt text, and the field their total is reported under.
PROMPT_TEXT: dict[tuple[str, ...], str] = {
    ("messages", ANY, "content"): "messages",
    ("messages", ANY, "content", ANY, "text"): "messages",
    ("prompt",): "prompt",
    ("prompt", ANY): "prompt",
}

Path = tuple[str | int, ...]


def path_name(path: Path) -> str:
    """``("messages", 0, "content")`` -> ``"messages.0.content"`` (FastAPI's ``loc`` joined)."""
    return ".".join(_printable(str(part)) for part in path)


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _pattern(path: Path) -> tuple[str, ...]:
    return tuple(ANY if isinstance(part, int) else part for part in path)


def check_text(text: str, path: Path) -> None:
    """Raise 400 if ``text`` cannot be encoded as UTF-8 (a lone UTF-16 surrogate, from ``\\ud83d``)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"{path_name(path) or 'request body'}: text is not valid Unicode: it contains a lone UTF-16 "
            f"surrogate ({_printable(text[exc.start])}) at character {exc.start}, which cannot be "
            "encoded as UTF-8",
            param=path_name(path) or None,
        ) from None


class _Walk:
    """State of one ``check_document`` walk: an explicit stack, so depth costs no recursion."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.prompt_chars: dict[str, int] = {}

    def run(self, document: Any) -> None:
        stack: list[tuple[Any, Path]] = [(document, ())]
        while stack:
            value, path = stack.pop()
            if len(path) > self.limits.max_json_depth:
                raise InvalidRequestError(
                    f"request body is nested more than {self.limits.max_json_depth} levels deep",
                    param=path_name(path[: self.limits.max_json_depth]),
                )
            if isinstance(value, str):
                check_text(value, path)
                self._count_prompt(value, path)
            elif isinstance(value, dict):
                for key, item in value.items():
                    check_text(key, (*path, key))
                    stack.append((item, (*path, key)))
            elif isinstance(value, list):
                self._check_count(value, path)
                stack.extend((item, (*path, index)) for index, item in enumerate(value))

    def _check_count(self, items: list[Any], path: Path) -> None:
        rule = COUNT_RULES.get(_pattern(path))
        if rule is None:
            return
        attribute, noun = rule
        limit = getattr(self.limits, attribute)
        if len(items) > limit:
            raise InvalidRequestError(
                f"{path_name(path)}: {len(items)} {noun} is more than this server accepts ({limit})",
                param=path_name(path),
            )

    def _count_prompt(self, text: str, path: Path) -> None:
        field = PROMPT_TEXT.get(_pattern(path))
        if field is None:
            return
        total = self.prompt_chars.get(field, 0) + len(text)
        self.prompt_chars[field] = total
        if total > self.limits.max_prompt_chars:
            raise InvalidRequestError(
                f"{field}: the prompt text is longer than this server accepts "
                f"({self.limits.max_prompt_chars} characters)",
                param=field,
            )


def check_document(document: Any, limits: RequestLimits) -> None:
    """Check a parsed JSON body against ``limits`` before validation; raise 400 naming the field.

    Rules: nesting depth <= ``max_json_depth``; every key and string encodable as UTF-8;
    ``messages`` <= ``max_messages``; each ``messages.N.content`` list <= ``max_content_parts``;
    a ``prompt`` list <= ``max_prompt_token_ids`` items; message text (all messages together) and
    prompt text (all prompts together) <= ``max_prompt_chars`` characters each."""
    _Walk(limits).run(document)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json(raw: bytes, limits: RequestLimits) -> Any:
    """Parse a request body; 400 for invalid JSON (NaN and Infinity included) or runaway nesting."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidRequestError(
            f"request body is nested more than {limits.max_json_depth} levels deep"
        ) from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, NaN / Infinity
        raise InvalidRequestError("request body is not valid JSON") from None


def parse_request(
    raw: bytes, model: type[BaseModel] | Callable[[Any], type[BaseModel]], limits: RequestLimits
) -> tuple[BaseModel | None, list[dict[str, Any]]]:
    """Parse, check and validate a body: ``(request, [])`` or ``(None, pydantic errors)``.

    Raises ``InvalidRequestError`` for the checks above. Runs inline or in a worker process, so
    its results are plain picklable values."""
    document = load_json(raw, limits)
    check_document(document, limits)
    if not isinstance(model, type):  # a route with several shapes picks one from the body
        model = model(document)
    return validate_document(document, model)


def validate_document(document: Any, model: type[BaseModel]) -> tuple[BaseModel | None, list[dict[str, Any]]]:
    """``(model.model_validate(document), [])``, or ``(None, pydantic errors)`` located in the body."""
    try:
        return model.model_validate(document), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        return None, [{"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]


def too_large(limit: int) -> RequestTooLargeError:
    """The 413 for a body over ``limit`` bytes."""
    return RequestTooLargeError(
        f"request body is larger than this server accepts ({limit} bytes)", param=None
    )


def too_slow(timeout_s: float) -> RequestTimeoutError:
    """The 408 for a body whose reads waited ``timeout_s`` seconds in all."""
    return RequestTimeoutError(
        f"request body did not arrive within {timeout_s:g} s (this server's request_body_timeout_s)",
        param=None,
    )


class BodyLimits:
    """ASGI middleware: 413 past ``limits().max_request_body_bytes`` bytes of request body, 408
    once the reads of the body have waited ``limits().request_body_timeout_s`` seconds in all.

    ``Content-Length`` is checked before the app runs (the body is never read); a chunked body
    is counted as it streams in, and the read that crosses the limit raises
    ``RequestTooLargeError``, which the app's error handler answers with 413. Only the time spent
    waiting for the client counts against the deadline, not the router's own delays between
    reads (a body already received is never refused); the read that would wait past it raises
    ``RequestTimeoutError`` (408 with ``Connection: close``, its body unread). Reads after the
    body's last chunk (a streaming response listening for the client's disconnect) have no
    deadline. ``limits`` is a callable because the router's config arrives after the app is
    built."""

    def __init__(self, app: Any, limits: Callable[[], RequestLimits]) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits()
        limit, timeout_s = limits.max_request_body_bytes, limits.request_body_timeout_s
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(too_large(limit))(scope, receive, send)
            return
        seen = 0
        waited = 0.0
        body_done = False

        async def limited_receive() -> dict:
            nonlocal seen, waited, body_done
            if body_done:
                return await receive()
            started = time.monotonic()
            try:
                # timeout_s - waited > 0: a read that used up the budget raised below. Not
                # wait_for: on Python 3.11 it runs receive() in a task of its own, so even a chunk
                # already received would wait for a turn of the event loop, counted as the client's.
                async with asyncio.timeout(timeout_s - waited):
                    message = await receive()
            except TimeoutError:
                raise too_slow(timeout_s) from None
            waited += time.monotonic() - started
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large(limit)
                body_done = not message.get("more_body", False)
            if not body_done and waited >= timeout_s:
                raise too_slow(timeout_s)
            return message

        await self.app(scope, limited_receive, send)
