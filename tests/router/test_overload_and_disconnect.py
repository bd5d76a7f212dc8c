"""Overload, client disconnects, missing chat templates and preflight-skipped models."""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from safetensors.torch import load_file, save_file

from tests.serve_fixtures import start_app_from_yaml, wait_ready, write_models_yaml

LONG = {"max_tokens": 200, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def extra_app(serve_cluster, tmp_path_factory, qwen2_checkpoint):
    import shutil

    folder = tmp_path_factory.mktemp("extra")
    no_template = folder / "no-template"
    shutil.copytree(qwen2_checkpoint, no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))

    broken = folder / "broken"
    shutil.copytree(qwen2_checkpoint, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.0.self_attn.q_proj.input_scale"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})

    models = [
        {
            "name": "busy",
            "checkpoint": str(qwen2_checkpoint),
            "engine": "cpu",
            "max_model_len": 512,
            "max_ongoing_requests": 1,
            "max_queued_requests": 1,
        },
        {"name": "plain", "checkpoint": str(no_template), "engine": "cpu", "max_model_len": 256},
        {"name": "broken", "checkpoint": str(broken), "engine": "cpu", "on_preflight_failure": "skip"},
    ]
    path = write_models_yaml(folder, models, name="extra", prefix="/extra")
    start_app_from_yaml(path)
    base = f"{serve_cluster}/extra"
    wait_ready(base)
    return base


def test_overload_is_503_with_retry_after(extra_app):
    def request(_: int) -> httpx.Response:
        body = {"model": "busy", "prompt": "Hello", **LONG}
        return httpx.post(f"{extra_app}/v1/completions", json=body, timeout=120)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(request, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected, statuses
    assert 1 <= int(rejected[0].headers["Retry-After"]) <= 60  # estimated from the queue (router/overload.py)
    assert rejected[0].json()["error"]["code"] == "overloaded"


def test_the_openai_client_waits_retry_after_and_retries_until_served(extra_app):
    """A 503 with Retry-After: the client waits that long, retries, and gets its answer."""
    import openai

    attempts: list[tuple[float, int, str | None]] = []

    def record(response: httpx.Response) -> None:
        attempts.append((time.monotonic(), response.status_code, response.headers.get("Retry-After")))

    body = {"model": "busy", "prompt": "Hello", **LONG, "max_tokens": 400}  # long enough to probe and retry

    def fill() -> httpx.Response:
        # A filler sent after a probe finds the queue taken by it: it tries again, so both fillers
        # are served in the end whatever order the router sees them and the probes in.
        deadline = time.monotonic() + 60
        while True:
            response = httpx.post(f"{extra_app}/v1/completions", json=body, timeout=120)
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            time.sleep(0.05)

    with ThreadPoolExecutor(2) as pool:  # one running, one queued: the queue (1) is full
        busy = [pool.submit(fill) for _ in range(2)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = httpx.get(f"{extra_app}/readyz", params={"model": "busy"}, timeout=30)
            assert ready.status_code == 200  # readiness never waits behind the full queue
            probe = httpx.post(f"{extra_app}/v1/completions", json={**body, "max_tokens": 1}, timeout=60)
            if probe.status_code == 503:
                break
        http = httpx.Client(event_hooks={"response": [record]}, timeout=120)
        llm = openai.OpenAI(base_url=f"{extra_app}/v1", api_key="unused", max_retries=8, http_client=http)
        reply = llm.completions.create(model="busy", prompt="Hi", max_tokens=1)
        assert [f.result().status_code for f in busy] == [200, 200]
    assert reply.choices[0].text is not None
    statuses = [status for _, status, _ in attempts]
    assert statuses[0] == 503 and statuses[-1] == 200, statuses
    for (sent_at, status, retry_after), (next_at, _, _) in itertools.pairwise(attempts):
        assert status == 503 and retry_after is not None
        assert next_at - sent_at >= int(retry_after) - 0.05  # waited at least Retry-After


def test_client_disconnect_aborts_the_request_in_the_engine(extra_app):
    def aborted() -> int:
        stats = httpx.get(f"{extra_app}/stats", timeout=30).json()
        return stats["models"]["busy"]["stats"]["aborted_total"]

    before = aborted()
    body = {"model": "busy", "prompt": "Hello", "stream": True, "max_tokens": 400, "ignore_eos": True}
    with httpx.stream("POST", f"{extra_app}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
    deadline = time.monotonic() + 30
    while aborted() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert aborted() == before + 1
    stats = httpx.get(f"{extra_app}/stats", timeout=30).json()["models"]["busy"]["stats"]
    assert stats["running"] == 0


def test_chat_without_template_is_400_but_completions_work(extra_app):
    body = {"model": "plain", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{extra_app}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert "has no chat template" in response.json()["error"]["message"]
    ok = httpx.post(
        f"{extra_app}/v1/completions", json={"model": "plain", "prompt": "hi", "max_tokens": 2}, timeout=60
    )
    assert ok.status_code == 200


def test_preflight_skipped_model_is_listed_unavailable_with_its_reason(extra_app):
    ready = httpx.get(f"{extra_app}/readyz", timeout=30)
    assert ready.status_code == 200
    broken = ready.json()["models"]["broken"]
    assert broken["available"] is False
    assert "quantized_tensors" in broken["reason"] and "input_scale" in broken["reason"]
    response = httpx.post(f"{extra_app}/v1/completions", json={"model": "broken", "prompt": "hi"}, timeout=30)
    # Configured but failed: 503 (not 404, which says "no such model"), its reason in short.
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "(the operator's `serve status` has the whole report)" in message and len(message) < 400
    expected = "model 'broken' is not being served: preflight check 'quantized_tensors' failed"
    assert message.startswith(expected)
