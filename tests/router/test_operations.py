"""Operations, through a real Ray Serve app: /metrics counts what was sent, API keys through the
openai client, readiness from the controller, and a hung engine leaving routing within 5 s."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_fixtures import start_app_from_yaml, wait_ready, write_models_yaml

FULL_KEY = "sk-ops-full-0123456789"
QWEN_ONLY_KEY = "sk-ops-qwen-0123456789"


@pytest.fixture(scope="module")
def ops_app(serve_cluster, tmp_path_factory, qwen2_checkpoint, llama_checkpoint):
    folder = tmp_path_factory.mktemp("ops")
    keys = {"keys": [{"key": FULL_KEY}, {"key": QWEN_ONLY_KEY, "models": ["ops-qwen", "oq"]}]}
    (folder / "keys.yaml").write_text(yaml.safe_dump(keys))
    models = [
        {"name": "ops-qwen", "aliases": ["oq"], "checkpoint": str(qwen2_checkpoint), "engine": "cpu",
         "max_model_len": 256},
        # scaled to zero from the start: /readyz must not wake it
        {"name": "ops-idle", "checkpoint": str(llama_checkpoint), "engine": "cpu", "max_model_len": 256,
         "autoscaling": {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1}},
    ]  # fmt: skip
    auth = {"api_keys_file": "keys.yaml", "protect_metrics": True}
    path = write_models_yaml(folder, models, name="ops", prefix="/ops", router={"auth": auth})
    start_app_from_yaml(path)
    base = f"{serve_cluster}/ops"
    wait_ready(base)
    return base


def client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def scrape(base: str) -> dict[str, list]:
    """/metrics as {sample name: [samples]}."""
    response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {FULL_KEY}"}, timeout=30)
    assert response.status_code == 200, response.text
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict[str, list], name: str, **labels: str) -> float:
    matching = [s for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(s.value for s in matching)


def test_metrics_count_the_requests_sent(ops_app):
    llm = client(ops_app, FULL_KEY)
    prompt_tokens = 0
    for _ in range(3):
        reply = llm.completions.create(
            model="ops-qwen", prompt="Hello there", max_tokens=4, extra_body={"ignore_eos": True}
        )
        prompt_tokens += reply.usage.prompt_tokens
    stream = llm.completions.create(
        model="oq",
        prompt="Hi",
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    prompt_tokens += [chunk for chunk in stream][-1].usage.prompt_tokens
    prompt_tokens += llm.completions.create(model="oq", prompt="Hi", max_tokens=1).usage.prompt_tokens
    with pytest.raises(openai.NotFoundError):
        llm.completions.create(model="no-such-model", prompt="Hi", max_tokens=1)

    # Ray's metrics agents publish every 10 s (metrics_report_interval_ms): wait for the last counts.
    m = "ops-qwen"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        samples = scrape(ops_app)
        done = total(samples, "vllm:e2e_request_latency_seconds_count", model_name=m) >= 5
        routed = total(samples, "modelopt_serve_http_requests_total", route="/v1/completions") >= 6
        if done and routed:
            break
        time.sleep(2)
    assert total(samples, "vllm:request_success_total", model_name=m, finished_reason="length") == 5
    for name in ("e2e_request_latency", "time_to_first_token", "request_queue_time", "request_prefill_time"):
        assert total(samples, f"vllm:{name}_seconds_count", model_name=m) == 5, name
    assert (
        total(samples, "vllm:inter_token_latency_seconds_count", model_name=m) == 4 * 3
    )  # 4 streams of 4 tokens
    assert total(samples, "vllm:generation_tokens_total", model_name=m) == 4 * 4 + 1
    assert total(samples, "vllm:prompt_tokens_total", model_name=m) == prompt_tokens
    assert total(samples, "vllm:num_preemptions_total", model_name=m) == 0
    assert total(samples, "vllm:num_requests_running", model_name=m) == 0
    assert total(samples, "vllm:num_requests_waiting", model_name=m) == 0
    assert "vllm:kv_cache_usage_perc" in samples
    ok = total(
        samples,
        "modelopt_serve_http_requests_total",
        route="/v1/completions",
        status_code="200",
        model_name=m,
    )
    assert ok == 5
    assert (
        total(samples, "modelopt_serve_http_requests_total", route="/v1/completions", status_code="404") == 1
    )
    start = [s for s in samples["modelopt_serve_engine_start_seconds"] if s.labels["model_name"] == m]
    assert len(start) == 1 and start[0].value > 0 and start[0].labels["ReplicaId"]
    replicas = {
        s.labels["ReplicaId"] for s in samples["vllm:request_success_total"] if s.labels["model_name"] == m
    }
    assert len(replicas) == 1 and "" not in replicas
    assert not [
        name
        for name in samples
        if name.startswith("ray_vllm") or "otel_scope" in str(samples[name][0].labels)
    ]
