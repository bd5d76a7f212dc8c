"""Fuzzing the OpenAI routes through the real app: no input gets a 5xx, every 4xx is OpenAI error JSON.

Hypothesis generates bodies from the request models' JSON schema (the schemas /openapi.json
publishes), then mutates one field into something hostile: huge, tiny, negative or non-finite
numbers (sent as raw JSON text, so ``NaN`` and ``1e400`` reach the server as written), odd Unicode
(lone surrogates, NUL, right-to-left marks) and deep nesting. ``max_tokens`` is kept at 4 or
below so a few hundred cases run in a couple of minutes on 2 cores; a wall-clock cap ends the
run early on a slow machine (the cases run so far still count).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

hypothesis = pytest.importorskip("hypothesis")
hypothesis_jsonschema = pytest.importorskip("hypothesis_jsonschema")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from serve_app.router.protocol import ChatCompletionRequest, CompletionRequest  # noqa: E402

CASES_PER_ROUTE = 150
WALL_CLOCK_CAP_S = 240.0  # both routes together
RAW_NUMBERS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "5e-324",
    "-5e-324",
    "1e-30",
    "0",
    "-1",
    "-0.0",
    "18446744073709551616",
    "-9223372036854775809",
    "9223372036854775807",
    "123456789012345678901234567890",
    "2.5",
]
ODD_TEXT = [
    "hi \ud83d",
    "\udc00",
    "nul\u0000byte",
    "\u202eright-to-left\u202c",
    "\ufeffbom",
    "\U0001f600" * 50,
    "",
    " ",
    "x" * 5000,
]
MODELS = ["qwen-tiny", "qwen", "llama-tiny"]
_started: list[float] = []


def _schema(model: type) -> dict:
    return model.model_json_schema()


def _raw(token: str) -> str:
    return f"__RAW__{token}__"


def encode(body: object) -> bytes:
    """JSON text, with the ``_raw`` placeholders replaced by their raw tokens (NaN, 1e400 ...)."""
    text = json.dumps(body)  # ensure_ascii: a lone surrogate goes out as the escape \\ud83d
    for token in RAW_NUMBERS:
        text = text.replace(json.dumps(_raw(token)), token)
    return text.encode()


def nested(depth: int) -> object:
    value: object = "deep"
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


HOSTILE = st.one_of(
    st.sampled_from(RAW_NUMBERS).map(_raw),
    st.sampled_from(ODD_TEXT),
    st.integers(min_value=2, max_value=300).map(nested),
    st.sampled_from([None, True, [], {}, [1, "a", None], {"role": "user"}]),
)


@st.composite
def bodies(draw: st.DrawFn, model: type) -> bytes:
    body = draw(hypothesis_jsonschema.from_schema(_schema(model)))
    body["model"] = draw(st.sampled_from(MODELS))
    body["max_tokens"] = draw(st.integers(min_value=1, max_value=4))
    body.pop("max_completion_tokens", None)
    body["stream"] = draw(st.booleans())
    if draw(st.booleans()):
        fields = [*sorted(body), "temperature", "top_p", "seed", "stop", "max_tokens", "messages", "prompt"]
        body[draw(st.sampled_from(fields))] = draw(HOSTILE)
    return encode(body)


def check(base: str, path: str, raw: bytes) -> None:
    if not _started:
        _started.append(time.monotonic())
    if time.monotonic() - _started[0] > WALL_CLOCK_CAP_S:
        return
    headers = {"content-type": "application/json"}
    with httpx.stream("POST", f"{base}{path}", content=raw, headers=headers, timeout=120) as response:
        text = response.read().decode("utf-8", "replace")
    assert response.status_code < 500, (raw[:2000], response.status_code, text[:2000])
    if response.status_code >= 400:
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"}, text
        assert isinstance(error["message"], str) and isinstance(error["type"], str)
        assert error["param"] is None or isinstance(error["param"], str)
    else:
        assert "InternalServerError" not in text, (raw[:2000], text[-2000:])


FUZZ = settings(
    max_examples=CASES_PER_ROUTE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def test_openapi_describes_the_request_bodies(two_model_app):
    document = httpx.get(f"{two_model_app}/openapi.json", timeout=30).json()
    for path, model in (
        ("/v1/chat/completions", ChatCompletionRequest),
        ("/v1/completions", CompletionRequest),
    ):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model.__name__}"}
        assert set(document["components"]["schemas"][model.__name__]["properties"]) == set(model.model_fields)


@FUZZ
@given(raw=bodies(ChatCompletionRequest))
def test_fuzzed_chat_requests_never_get_a_5xx(two_model_app, raw):
    check(two_model_app, "/v1/chat/completions", raw)


@FUZZ
@given(raw=bodies(CompletionRequest))
def test_fuzzed_completion_requests_never_get_a_5xx(two_model_app, raw):
    check(two_model_app, "/v1/completions", raw)
