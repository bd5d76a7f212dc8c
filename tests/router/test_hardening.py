"""Client input never causes a 500, cannot run code unasked, and cannot stall other requests (issue 14)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from serve_app.errors import InvalidRequestError, MetricsUnavailableError
from serve_app.registry.models import RouterSpec
from serve_app.router.errors import error_response
from serve_app.router.limits import RequestLimits, check_document, parse_request
from serve_app.router.protocol import ChatCompletionRequest

LIMITS = RequestLimits.from_spec(RouterSpec())
SURROGATE = "lone UTF-16 surrogate (\\ud83d) at character 3, which cannot be encoded as UTF-8"
SLOW_TEMPLATE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def post(base: str, path: str, body: dict | bytes, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(f"{base}{path}", content=content, headers=headers, timeout=120, **kwargs)


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def chat(content: object = "hi", **fields) -> dict:
    return {"model": "qwen", "messages": [{"role": "user", "content": content}], "max_tokens": 2, **fields}


# --- strings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw", "param"),
    [
        ("/v1/chat/completions", chat("hi \ud83d"), "messages.0.content"),
        ("/v1/chat/completions", chat([{"type": "text", "text": "hi \ud83d"}]), "messages.0.content.0.text"),
        ("/v1/completions", {"model": "qwen", "prompt": "hi \ud83d", "max_tokens": 2}, "prompt"),
        ("/v1/completions", {"model": "qwen", "prompt": ["ok", "hi \ud83d"], "max_tokens": 2}, "prompt.1"),
        ("/v1/completions", {"model": "qwen", "prompt": "x", "stop": ["hi \ud83d"]}, "stop.0"),
    ],
)
def test_text_that_is_not_utf8_is_400_naming_the_field(two_model_app, path, raw, param):
    body = json.dumps(raw).encode()  # json.dumps writes the lone surrogate as the escape \ud83d
    error = error_of(post(two_model_app, path, body), 400)
    assert error["param"] == param
    assert error["message"] == f"{param}: text is not valid Unicode: it contains a {SURROGATE}"


# --- chat templates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["tokenize", "add_generation_prompt", "messages", "chat_template", "bos_token"]
)
def test_reserved_chat_template_kwargs_are_400_naming_them(two_model_app, key):
    error = error_of(post(two_model_app, "/v1/chat/completions", chat(chat_template_kwargs={key: True})), 400)
    assert error["param"] == "chat_template_kwargs"
    assert error["message"] == (
        f"chat_template_kwargs: {key} cannot be set by a request: the server sets these when it renders "
        "the chat template"
    )


def test_a_chat_template_kwarg_the_template_does_not_read_is_400(two_model_app):
    error = error_of(post(two_model_app, "/v1/chat/completions", chat(chat_template_kwargs={"foo": 1})), 400)
    assert error["message"] == (
        "chat_template_kwargs: foo not used by this model's chat template; accepted keys: "
        "enable_thinking, thinking"
    )


def test_enable_thinking_is_accepted(two_model_app):
    body = chat(chat_template_kwargs={"enable_thinking": False})
    assert post(two_model_app, "/v1/chat/completions", body).status_code == 200


def test_a_request_chat_template_is_refused_unless_the_model_opts_in(two_model_app):
    error = error_of(post(two_model_app, "/v1/chat/completions", chat(chat_template="{{ 1 }}")), 400)
    assert error["param"] == "chat_template"
    assert error["message"] == (
        "model 'qwen-tiny' does not accept a chat_template in the request; its registry entry must set "
        "allow_request_chat_template: true"
    )
    accepted = chat(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}", model="llama-tiny")
    response = post(two_model_app, "/v1/chat/completions", accepted)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] >= 1


def test_a_template_syntax_error_is_400(two_model_app):
    body = chat(chat_template="{% for %}", model="llama-tiny")
    error = error_of(post(two_model_app, "/v1/chat/completions", body), 400)
    assert error["message"] == (
        "the chat template of model 'llama-tiny' could not be rendered: syntax error on line 1: "
        "Expected an expression, got 'end of statement block'"
    )


def test_a_template_that_raises_is_400_with_its_message(two_model_app):
    body = chat(chat_template="{{ raise_exception('roles must alternate') }}", model="llama-tiny")
    error = error_of(post(two_model_app, "/v1/chat/completions", body), 400)
    assert error["message"] == (
        "the chat template of model 'llama-tiny' could not be rendered: roles must alternate"
    )


def test_a_slow_template_fails_alone_within_its_budget(two_model_app):
    """llama-tiny's budget is 1 s; its other requests complete while the slow one renders."""
    slow: dict = {}

    def send_slow() -> None:
        started = time.monotonic()
        slow["response"] = post(
            two_model_app, "/v1/chat/completions", chat(chat_template=SLOW_TEMPLATE, model="llama-tiny")
        )
        slow["seconds"] = time.monotonic() - started
        slow["ended"] = time.monotonic()

    thread = threading.Thread(target=send_slow)
    thread.start()
    time.sleep(0.2)  # the slow render is under way (it never finishes on its own)
    normal = post(two_model_app, "/v1/chat/completions", chat(model="llama-tiny"))
    normal_ended = time.monotonic()
    thread.join()
    assert normal.status_code == 200, normal.text
    assert normal_ended < slow["ended"]
    error = error_of(slow["response"], 400)
    assert error["param"] == "chat_template"
    assert error["message"] == (
        "the request's chat_template took longer than this model's budget of 1 s to render; it was stopped"
    )
    assert slow["seconds"] < 30
    # The killed render process was replaced: templates still render.
    again = chat(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}", model="llama-tiny")
    assert post(two_model_app, "/v1/chat/completions", again).status_code == 200


# --- sizes -------------------------------------------------------------------------------------------


def test_a_body_over_the_byte_limit_is_413(two_model_app):
    body = json.dumps(chat("x" * (LIMITS.max_request_body_bytes + 1))).encode()
    error = error_of(post(two_model_app, "/v1/chat/completions", body), 413)
    assert error["code"] == "request_too_large"
    assert error["message"] == "request body is larger than this server accepts (16777216 bytes)"


def test_a_chunked_body_over_the_byte_limit_is_413(two_model_app):
    def chunks():
        yield b'{"model": "qwen", "prompt": "'
        for _ in range(17):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    response = httpx.post(
        f"{two_model_app}/v1/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert error_of(response, 413)["code"] == "request_too_large"


@pytest.mark.parametrize("path", ["/v1/completions", "/detokenize"])
def test_a_body_that_arrives_too_slowly_is_408_and_the_connection_closes(two_model_app, path):
    """A client that declares 1,000 bytes and sends 52 used to keep its connection open (70 s and
    counting). The two-model app's router allows 10 s (``request_body_timeout_s``). /detokenize
    once let FastAPI read its body, which turned the 408 into a 400 on an open connection."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(two_model_app)
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=60) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + b"Content-Length: 1000\r\n\r\n"
            + b'{"model": "qwen", "prompt": "'
            + b"x" * 23
        )
        reply = b""
        while chunk := conn.recv(65536):  # until the server closes the connection
            reply += chunk
    waited = time.monotonic() - started
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply[:200]
    assert 9 < waited < 30
    error = json.loads(body)["error"]
    assert error == {
        "message": "request body did not arrive within 10 s (this server's request_body_timeout_s)",
        "type": "RequestTimeoutError",
        "param": None,
        "code": "request_timeout",
    }


def test_the_body_deadline_ends_with_the_body():
    """A streamed answer listens for the client's disconnect on the same receive channel for as
    long as it streams: those reads must not inherit the body's deadline."""
    import asyncio

    from serve_app.router.limits import BodyLimits

    limits = RequestLimits.from_spec(RouterSpec(request_body_timeout_s=0.2))
    seen: list[dict] = []

    async def app(scope, receive, send):
        seen.append(await receive())
        seen.append(await receive())  # the disconnect, after the deadline

    async def receive_twice():
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await asyncio.sleep(0.5)
            return {"type": "http.disconnect"}

        return receive

    async def run():
        middleware = BodyLimits(app, lambda: limits)
        await middleware({"type": "http", "headers": []}, await receive_twice(), None)

    asyncio.run(run())
    assert [m["type"] for m in seen] == ["http.request", "http.disconnect"]


def test_the_body_deadline_counts_only_the_wait_for_the_client():
    """A body that has arrived is never refused because the router was slow to read it."""
    import asyncio

    from serve_app.errors import RequestTimeoutError
    from serve_app.router.limits import BodyLimits

    limits = RequestLimits.from_spec(RouterSpec(request_body_timeout_s=0.2))

    async def run(first_chunk_after_s: float) -> list[dict]:
        seen: list[dict] = []
        chunks = [{"type": "http.request", "body": b"{", "more_body": True}]

        async def receive():
            if chunks:
                return chunks.pop()
            await asyncio.sleep(first_chunk_after_s)
            return {"type": "http.request", "body": b"}", "more_body": False}

        async def app(scope, receive, send):
            await asyncio.sleep(0.3)  # the router is busy: past the deadline before it reads
            seen.append(await receive())
            seen.append(await receive())

        await BodyLimits(app, lambda: limits)({"type": "http", "headers": []}, receive, None)
        return seen

    assert [m["body"] for m in asyncio.run(run(0.05))] == [b"{", b"}"]
    with pytest.raises(RequestTimeoutError, match=r"did not arrive within 0\.2 s"):
        asyncio.run(run(0.5))  # the client is the slow one


def test_too_many_messages_is_400_naming_messages(two_model_app):
    body = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}] * 2049}
    error = error_of(post(two_model_app, "/v1/chat/completions", body), 400)
    assert error["param"] == "messages"
    assert error["message"] == "messages: 2049 messages is more than this server accepts (2048)"


@pytest.mark.parametrize(
    ("document", "param", "message"),
    [
        (
            chat([{"type": "text", "text": "a"}] * 257),
            "messages.0.content",
            "messages.0.content: 257 content parts is more than this server accepts (256)",
        ),
        (
            chat("x" * (4 * 1024 * 1024 + 1)),
            "messages",
            "messages: the prompt text is longer than this server accepts (4194304 characters)",
        ),
        (
            {"model": "m", "prompt": ["x" * (2 * 1024 * 1024), "y" * (2 * 1024 * 1024 + 1)]},
            "prompt",
            "prompt: the prompt text is longer than this server accepts (4194304 characters)",
        ),
        (
            {"model": "m", "prompt": [1] * (1024 * 1024 + 1)},
            "prompt",
            "prompt: 1048577 prompt items is more than this server accepts (1048576)",
        ),
    ],
)
def test_count_and_character_limits_name_the_field(document, param, message):
    with pytest.raises(InvalidRequestError) as info:
        check_document(document, LIMITS)
    assert (info.value.param, str(info.value)) == (param, message)


def test_deep_nesting_and_non_standard_json_are_400():
    with pytest.raises(InvalidRequestError, match=r"^request body is nested more than 64 levels deep$"):
        parse_request(
            b'{"model": "m", "messages": ' + b"[" * 100 + b"]" * 100 + b"}", ChatCompletionRequest, LIMITS
        )
    with pytest.raises(InvalidRequestError, match=r"^request body is nested more than 64 levels deep$"):
        parse_request(b"[" * 100_000, ChatCompletionRequest, LIMITS)
    with pytest.raises(InvalidRequestError, match=r"^request body is not valid JSON$"):
        parse_request(b'{"model": "m", "prompt": "x", "temperature": NaN}', ChatCompletionRequest, LIMITS)


def test_a_huge_body_does_not_stall_a_small_request(two_model_app):
    """200,000 messages are parsed in a worker process: /healthz answers while that runs."""
    big = json.dumps({"model": "qwen", "messages": [{"role": "user", "content": "hi"}] * 200_000}).encode()
    done: dict = {}

    def send_big() -> None:
        done["response"] = post(two_model_app, "/v1/chat/completions", big)
        done["ended"] = time.monotonic()

    thread = threading.Thread(target=send_big)
    started = time.monotonic()
    thread.start()
    small_ended = []
    while thread.is_alive():
        assert httpx.get(f"{two_model_app}/healthz", timeout=60).status_code == 200
        small_ended.append(time.monotonic())
    thread.join()
    big_seconds = done["ended"] - started
    assert error_of(done["response"], 400)["param"] == "messages"
    # Small requests kept completing while the big one was being processed.
    during = [t for t in small_ended if t < done["ended"]]
    assert len(during) >= 3, (len(during), big_seconds)
    gaps = [b - a for a, b in zip([started, *during], during, strict=False)]
    assert max(gaps) < big_seconds / 2, (gaps, big_seconds)


# --- error mapping ----------------------------------------------------------------------------------


def test_405_keeps_its_allow_header(two_model_app):
    response = httpx.get(f"{two_model_app}/v1/chat/completions", timeout=30)
    error = error_of(response, 405)
    assert response.headers["allow"] == "POST"
    assert error["message"] == "Method Not Allowed"


def test_an_unexpected_error_is_500_with_a_request_id_and_no_internals(caplog):
    with caplog.at_level("ERROR", logger="ray.serve"):
        response = error_response(RuntimeError("boom in /opt/venv/lib/python3.11/site-packages/x.py"))
    body = json.loads(response.body)
    assert response.status_code == 500
    message = body["error"]["message"]
    assert message.startswith("internal error; request id ")
    request_id = message.rsplit(" ", 1)[1]
    assert len(request_id) == 32 and "/opt" not in response.body.decode()
    assert body["error"] == {
        "message": message,
        "type": "InternalServerError",
        "param": None,
        "code": "internal_error",
    }
    assert request_id in caplog.text and "/opt/venv" in caplog.text  # the details are in the log


def test_a_helper_process_that_cannot_start_is_503_with_retry_after():
    """Too many open files when a large body needs a parsing helper: the server's trouble, not
    the client's, and the pool starts another for the next request (tests/test_workers.py)."""
    error = ChildProcessError("could not start a helper process: [Errno 24] Too many open files")
    response = error_response(error)
    body = json.loads(response.body)
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert body["error"]["code"] == "helper_unavailable"
    assert body["error"]["message"].startswith(
        "a helper process of the server stopped or could not start; retry later; request id "
    )
    assert "Too many open files" not in body["error"]["message"]


def test_metrics_that_cannot_be_merged_are_503_with_the_reason_and_retry_after():
    message = "merging the metrics agents' text (60000000 characters) took longer than 30 s; retry later"
    response = error_response(MetricsUnavailableError(message))
    body = json.loads(response.body)
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    kind = (body["error"]["type"], body["error"]["code"])
    assert kind == ("ServiceUnavailableError", "metrics_unavailable")
    assert body["error"]["message"].startswith(f"{message}; request id ")


def test_an_error_message_with_a_surrogate_still_encodes():
    response = error_response(InvalidRequestError("bad \ud83d", param="x\udc00"))
    assert json.loads(response.body)["error"]["message"] == "bad \\ud83d"
