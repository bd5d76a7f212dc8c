"""The OpenAI API through a real Ray Serve app, with the official openai client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

CHAT = [{"role": "user", "content": "Hello there, how are you?"}]


def test_lists_models_and_aliases(client):
    ids = {model.id for model in client.models.list().data}
    assert ids == {"qwen-tiny", "qwen", "llama-tiny"}


def test_chat_completion_reports_text_usage_and_finish_reason(client):
    response = client.chat.completions.create(model="qwen-tiny", messages=CHAT, max_tokens=8, temperature=0)
    choice = response.choices[0]
    assert response.model == "qwen-tiny"
    assert response.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.finish_reason in {"length", "stop"}
    assert response.usage.completion_tokens <= 8
    assert response.usage.prompt_tokens > 5
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_completion_runs_to_max_tokens_with_ignore_eos(client):
    response = client.completions.create(
        model="llama-tiny",
        prompt="The quick brown fox",
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert response.object == "text_completion"
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 12
    assert response.choices[0].text


@pytest.mark.parametrize("model", ["qwen-tiny", "llama-tiny"])
def test_streamed_chat_equals_non_streamed_at_temperature_0(client, model):
    kwargs = dict(model=model, messages=CHAT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 24


def test_streamed_completion_equals_non_streamed(client):
    kwargs = dict(
        model="llama-tiny",
        prompt="Ray Serve scales",
        max_tokens=20,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    whole = client.completions.create(**kwargs).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs))
    assert streamed == whole


def test_raw_stream_is_server_sent_events_ending_in_done(two_model_app):
    body = {"model": "qwen", "prompt": "Hello", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{two_model_app}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"


def test_models_answer_differently_and_aliases_route_to_the_same_model(client):
    def greedy(model: str) -> str:
        return (
            client.completions.create(
                model=model,
                prompt="Hello world",
                max_tokens=10,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            .choices[0]
            .text
        )

    assert greedy("qwen") == greedy("qwen-tiny")
    assert greedy("qwen-tiny") != greedy("llama-tiny")


def test_concurrent_requests_to_both_models(client):
    def ask(index: int) -> tuple[str, str]:
        model = ["qwen-tiny", "llama-tiny"][index % 2]
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"request {index}"}],
            max_tokens=6,
            extra_body={"ignore_eos": True},
        )
        return model, response.model

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(16)))
    assert [served for served, _ in results] == [answered for _, answered in results]
    assert len(results) == 16


def test_seed_makes_sampling_reproducible(client):
    kwargs = dict(
        model="qwen-tiny",
        prompt="Once upon a time",
        max_tokens=12,
        temperature=1.0,
        seed=7,
        extra_body={"ignore_eos": True},
    )
    assert (
        client.completions.create(**kwargs).choices[0].text
        == client.completions.create(**kwargs).choices[0].text
    )


def test_stop_string_ends_generation_without_the_stop_text(client):
    free = (
        client.completions.create(
            model="llama-tiny", prompt="Hello", max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
    )
    stop = free[3:6]
    if not stop.strip():
        pytest.skip("random model produced whitespace; nothing distinctive to stop on")
    response = client.completions.create(
        model="llama-tiny",
        prompt="Hello",
        max_tokens=20,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].text == free[: free.index(stop)]


# --- errors ----------------------------------------------------------------------------------------


def test_unknown_model_is_404_listing_served_names(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4", messages=CHAT)
    error = info.value.body
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"
    assert "llama-tiny" in error["message"] and "qwen-tiny" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "qwen"}, "messages", "messages"),
        ({"model": "qwen", "messages": CHAT, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"model": "qwen", "messages": CHAT, "temperature": -1}, "temperature", "greater than or equal to 0"),
        ({"model": "qwen", "messages": CHAT, "n": 17}, "n", "less than or equal to 16"),
        ({"messages": CHAT}, "model", "model"),
    ],
)
def test_bad_fields_are_400_naming_the_field(two_model_app, body, param, fragment):
    response = httpx.post(f"{two_model_app}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "BadRequestError"
    assert (error["param"] or "") == param
    assert fragment in error["message"]


def test_malformed_json_is_400(two_model_app):
    response = httpx.post(
        f"{two_model_app}/v1/completions",
        content=b'{"model": "qwen", "prompt": ',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "request body is not valid JSON"


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context_is_400_with_both_numbers(client, stream):
    long_prompt = "hello world " * 200  # past 256 tokens, not past the character bound
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="qwen-tiny", prompt=long_prompt, max_tokens=4, stream=stream)
    error = info.value.body
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 256 tokens" in error["message"]
    assert "input tokens" in error["message"]


def test_max_tokens_beyond_context_is_400(client):
    with pytest.raises(
        openai.BadRequestError, match=r"you requested \d+ tokens \(\d+ in the input, 250 in the"
    ):
        client.chat.completions.create(model="qwen-tiny", messages=CHAT, max_tokens=250)


def test_unknown_route_is_openai_shaped_404(two_model_app):
    response = httpx.get(f"{two_model_app}/v1/nothing", timeout=30)
    assert response.status_code == 404
    assert "error" in response.json()


def test_health_and_readiness(two_model_app):
    assert httpx.get(f"{two_model_app}/healthz", timeout=30).json() == {"status": "ok"}
    ready = httpx.get(f"{two_model_app}/readyz", timeout=30).json()
    assert ready["status"] == "ready"
    assert set(ready["models"]) == {"qwen-tiny", "llama-tiny"}
    assert ready["models"]["qwen-tiny"]["replicas"] == 1  # RUNNING replicas
    stats = httpx.get(f"{two_model_app}/stats", timeout=30).json()
    assert stats["models"]["qwen-tiny"]["max_model_len"] == 256


def test_stats_report_where_time_to_first_token_went(client, two_model_app):
    for stream in (False, True):
        reply = client.completions.create(model="qwen-tiny", prompt="Hi", max_tokens=2, stream=stream)
        if stream:
            list(reply)
    stats = httpx.get(f"{two_model_app}/stats", timeout=30).json()
    model = stats["models"]["qwen-tiny"]
    latency = model["latency"]
    assert set(latency) == {"router_to_replica", "tokenize", "engine_first_output"}
    for stage in [*latency.values(), stats["router"]["dispatch"]]:
        assert stage["count"] >= 2
        assert 0 <= stage["p50_ms"] <= stage["p99_ms"] <= stage["max_ms"] < 60_000
    # the event loops' lag is sampled from start (model) or first request (router) on
    assert model["loop"]["loop_lag"]["count"] > 0 and stats["router"]["loop_lag"]["count"] > 0
    assert set(model["loop"]) == set(stats["router"]) - {"dispatch"} == {"loop_lag", "gc_pause"}
    # where the replica's start went, each phase in seconds
    assert {"process_to_init", "engine", "tokenizer", "gc_freeze"} <= set(model["start_phases"])
    phases = model["start_phases"]
    assert sum(phases.values()) <= model["start_seconds"] + phases["process_to_init"] + 0.1


def test_stats_waiting_says_where_a_stream_in_flight_waits(client, two_model_app):
    """/stats?waiting=1 (issue 13's census): with a stream open, the model replica's census finds
    it suspended in this project's code, and the router's finds its relay; plain /stats has none."""
    stream = client.completions.create(model="qwen-tiny", prompt="Hi", max_tokens=200, stream=True)
    try:
        next(iter(stream))
        stats = httpx.get(f"{two_model_app}/stats", params={"waiting": "1"}, timeout=60).json()
    finally:
        stream.close()
    model = stats["models"]["qwen-tiny"]["waiting"]
    assert model["suspended"] >= model["leaves"] > 0
    assert any("serve_app/" in place for place, _ in model["top"]), model["top"]
    assert stats["router"]["waiting"]["leaves"] > 0
    plain = httpx.get(f"{two_model_app}/stats", timeout=30).json()
    assert "waiting" not in plain["router"] and "waiting" not in plain["models"]["qwen-tiny"]
    bad = httpx.get(f"{two_model_app}/stats", params={"waiting": "abc"}, timeout=30)
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "query.waiting" and error["code"] == "invalid_request"
    assert "valid boolean" in error["message"]


def test_stats_profile_says_what_each_event_loop_spent_its_time_on(client, two_model_app):
    """/stats?profile=S (issue 13): with streams running, each model replica's loop profile names
    this project's streaming code, and the router's its relay; out-of-range S is a 400."""
    streams = [
        client.completions.create(model="qwen-tiny", prompt="Hi", max_tokens=240, stream=True)
        for _ in range(3)
    ]
    try:
        for stream in streams:
            next(iter(stream))
        stats = httpx.get(f"{two_model_app}/stats", params={"profile": "1.5"}, timeout=90).json()
    finally:
        for stream in streams:
            stream.close()
    model = stats["models"]["qwen-tiny"]["profile"]
    assert 1.4 <= model["seconds"] <= 5 and 0 < model["busy_share"] <= 1, model
    packages = {name for name, _, _ in model["by_package"]}
    assert {"serve_app", "ray"} <= packages, model["by_package"]
    assert any(place.startswith("serve_app/") for place, _ in model["top_total"]), model["top_total"]
    assert "profile" in stats["router"] and stats["router"]["profile"]["seconds"] >= 1.4
    # an idle model's loop is mostly waiting in select
    idle = stats["models"]["llama-tiny"]["profile"]
    assert idle["busy_share"] < 0.5 and idle["loop_or_idle_s"] > 1, idle
    bad = httpx.get(f"{two_model_app}/stats", params={"profile": "11"}, timeout=30)
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "query.profile" and error["code"] == "invalid_request"


def test_many_clients_asking_for_stats_at_once_all_get_them(two_model_app):
    """Concurrent /stats callers share one gathering (each asks every model through its queue)."""

    def ask(_):
        return httpx.get(f"{two_model_app}/stats", params={"waiting": "1"}, timeout=60)

    with ThreadPoolExecutor(max_workers=30) as pool:
        replies = list(pool.map(ask, range(30)))
    assert {reply.status_code for reply in replies} == {200}
    bodies = [reply.json() for reply in replies]
    assert all("waiting" in body["models"]["qwen-tiny"] for body in bodies)
    assert all(body["models"]["llama-tiny"]["max_model_len"] > 0 for body in bodies)
