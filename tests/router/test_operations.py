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
    # Absolute: a relative keys file resolves against the folder the cluster started from.
    auth = {"api_keys_file": str(folder / "keys.yaml"), "protect_metrics": True}
    path = write_models_yaml(folder, models, name="ops", prefix="/ops", auth=auth)
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
        routed = (
            total(samples, "modelopt_serve_http_requests_total", application="ops", route="/v1/completions")
            >= 6
        )
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
        total(
            samples,
            "modelopt_serve_http_requests_total",
            route="/v1/completions",
            status_code="404",
            application="ops",
        )
        == 1
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


def test_api_keys_through_the_openai_client(ops_app):
    missing = httpx.get(f"{ops_app}/v1/models", timeout=30)  # the openai client always sends one
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert missing.json()["error"]["message"].startswith("missing API key")
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(ops_app, FULL_KEY[:-1] + "x").completions.create(model="ops-qwen", prompt="Hi", max_tokens=1)
    assert wrong.value.code == "invalid_api_key"
    assert wrong.value.body == {
        "message": "incorrect API key provided",
        "type": "AuthenticationError",
        "param": None,
        "code": "invalid_api_key",
    }
    reply = client(ops_app, FULL_KEY).chat.completions.create(
        model="ops-qwen", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.choices[0].finish_reason in ("stop", "length")

    restricted = client(ops_app, QWEN_ONLY_KEY)
    assert sorted(m.id for m in restricted.models.list()) == ["ops-qwen", "oq"]
    assert restricted.completions.create(model="oq", prompt="Hi", max_tokens=1).choices
    with pytest.raises(openai.PermissionDeniedError) as denied:
        restricted.completions.create(model="ops-idle", prompt="Hi", max_tokens=1)
    assert denied.value.code == "model_not_allowed"
    assert denied.value.body["param"] == "model"
    tokenize = httpx.post(f"{ops_app}/tokenize", json={"model": "ops-qwen", "prompt": "Hi"}, timeout=30)
    assert tokenize.status_code == 401


def test_open_and_closed_endpoints(ops_app):
    assert httpx.get(f"{ops_app}/healthz", timeout=30).status_code == 200
    assert httpx.get(f"{ops_app}/readyz", timeout=30).status_code == 200  # protect_readyz: false
    closed = httpx.get(f"{ops_app}/metrics", timeout=30)
    assert closed.status_code == 401 and closed.json()["error"]["code"] == "invalid_api_key"


def test_readiness_comes_from_the_controller_and_does_not_wake_a_scaled_to_zero_model(ops_app):
    from ray import serve

    for _ in range(5):
        ready = httpx.get(f"{ops_app}/readyz", timeout=30)
    assert ready.status_code == 200
    models = ready.json()["models"]
    assert models["ops-qwen"] == {"ready": True, "available": True, "replicas": 1, "application": "RUNNING"}
    assert models["ops-idle"]["ready"] is False and models["ops-idle"]["scaled_to_zero"] is True
    idle = httpx.get(f"{ops_app}/readyz", params={"model": "ops-idle"}, timeout=30)
    assert idle.status_code == 503
    assert idle.json()["reason"] == "scaled to zero (min_replicas: 0); a request starts a replica"
    alias = httpx.get(f"{ops_app}/readyz", params={"model": "oq"}, timeout=30)
    assert alias.status_code == 200 and alias.json()["model"] == "ops-qwen"
    assert httpx.get(f"{ops_app}/readyz", params={"model": "nope"}, timeout=30).status_code == 404
    health = httpx.get(f"{ops_app}/health", timeout=30)
    assert health.status_code == 200 and health.content == b""
    deployment = serve.status().applications["ops-ops-idle"].deployments["ModelServer"]
    assert sum(deployment.replica_states.values()) == 0  # still asleep after every probe


# --- a hung engine leaves routing ------------------------------------------------------------


@pytest.fixture(scope="module")
def hanging_app(serve_cluster, qwen2_checkpoint):
    from ray import serve

    from serve_app.deployments.builder import plan_models
    from serve_app.deployments.model_server import ModelServer
    from serve_app.engines.selection import Platform, engine_config
    from serve_app.registry.models import ModelSpec
    from tests.router.hanging_engine import HangingEngine

    spec = ModelSpec(
        name="hangs",
        checkpoint=qwen2_checkpoint,
        engine="cpu",
        max_model_len=128,
        autoscaling={"min_replicas": 2, "max_replicas": 2},
    )
    (planned,) = plan_models([spec], Platform(has_vllm=False, gpus=0))
    options = {**planned.options, "graceful_shutdown_timeout_s": 1}
    app = serve.deployment(ModelServer).options(**options).bind(HangingEngine, engine_config(spec), 0.0)
    handle = serve.run(app, name="hangs", route_prefix=None)
    yield handle
    serve.delete("hangs")


def running(app: str, deployment: str) -> int:
    from ray import serve

    return serve.status().applications[app].deployments[deployment].replica_states.get("RUNNING", 0)


def completion_request(seed: int | None = None):
    from serve_app.deployments.requests import InferenceRequest
    from serve_app.engines.protocol import SamplingOptions

    return InferenceRequest(
        kind="completion",
        request_id=f"r-{time.monotonic_ns()}",
        model="hangs",
        created=0,
        prompts=("Hello",),
        stream=False,
        sampling=SamplingOptions(max_tokens=2, temperature=0, seed=seed),
        max_tokens_given=True,
    )


def test_a_hung_engine_leaves_routing_within_5_seconds(hanging_app):
    from tests.router.hanging_engine import HANG_SEED

    assert running("hangs", "ModelServer") == 2
    hung = hanging_app.complete.remote(completion_request(HANG_SEED))  # never answers
    hung_at = time.monotonic()
    while running("hangs", "ModelServer") == 2 and time.monotonic() - hung_at < 30:
        time.sleep(0.1)
    left_after = time.monotonic() - hung_at
    assert left_after < 5, f"the hung replica was still routed to after {left_after:.1f} s"
    # Requests go to the healthy replica meanwhile (and to the replacement once it runs).
    replies = [hanging_app.complete.remote(completion_request()).result(timeout_s=60) for _ in range(3)]
    assert [reply["choices"][0]["finish_reason"] for reply in replies] == ["length"] * 3
    hung.cancel()


def test_stats_show_a_limited_key_only_its_models(ops_app):
    """/stats answers with every model's details, asked through their queues: a key limited to
    some models sees only those (as GET /v1/models lists only those)."""

    def models(key: str) -> set[str]:
        response = httpx.get(f"{ops_app}/stats", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert response.status_code == 200, response.text
        return set(response.json()["models"])

    assert models(FULL_KEY) == {"ops-qwen", "ops-idle"}
    assert models(QWEN_ONLY_KEY) == {"ops-qwen"}
