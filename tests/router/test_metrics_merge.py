"""/metrics' merge of metrics agents' text: vLLM names back, Ray's bookkeeping labels gone,
counters vLLM starts at zero present, other series left out, Retry-After's estimate."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from serve_app.router.metrics import merge
from serve_app.router.overload import ModelLoad

RAY = 'Component="core_worker",NodeAddress="10.0.0.1",SessionName="s",Version="2.60.0",WorkerId="w{w}",otel_scope_name="ray",otel_scope_schema_url="",otel_scope_version=""'  # noqa: E501


def agent(worker: int, replica: str) -> str:
    labels = RAY.format(w=worker)
    return f"""# HELP ray_vllm_num_requests_running Number of requests in model execution batches.
# TYPE ray_vllm_num_requests_running gauge
ray_vllm_num_requests_running{{{labels},ReplicaId="{replica}",engine="0",model_name="m"}} 2.0
# HELP ray_vllm_generation_tokens_total Number of generation tokens processed.
# TYPE ray_vllm_generation_tokens_total counter
ray_vllm_generation_tokens_total{{{labels},ReplicaId="{replica}",engine="0",model_name="m"}} 7.0
# HELP ray_modelopt_serve_http_requests_total HTTP requests.
# TYPE ray_modelopt_serve_http_requests_total counter
ray_modelopt_serve_http_requests_total{{{labels},ReplicaId="router",method="GET",model_name="",route="/readyz",status_code="200"}} 3.0
# HELP ray_node_cpu_utilization CPU.
# TYPE ray_node_cpu_utilization gauge
ray_node_cpu_utilization{{{labels}}} 12.0
"""  # noqa: E501


def test_two_agents_merge_into_vllm_named_series():
    text = merge([agent(1, "r1"), agent(2, "r2")]).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {
        "vllm:num_requests_running",
        "vllm:generation_tokens",
        "vllm:num_preemptions",
        "vllm:prompt_tokens",
        "modelopt_serve_http_requests",
    }
    running = families["vllm:num_requests_running"].samples
    assert sorted(s.labels["ReplicaId"] for s in running) == ["r1", "r2"]
    assert set(running[0].labels) == {"NodeAddress", "WorkerId", "ReplicaId", "engine", "model_name"}
    assert [s.value for s in families["vllm:generation_tokens"].samples] == [7.0, 7.0]
    preemptions = families["vllm:num_preemptions"].samples
    assert [(s.name, s.value) for s in preemptions] == [("vllm:num_preemptions_total", 0.0)] * 2
    assert len(families["modelopt_serve_http_requests"].samples) == 2  # one per router worker
    assert "# TYPE vllm:generation_tokens_total counter" in text


def test_retry_after_is_the_time_the_queue_needs_to_drain():
    load = ModelLoad()
    started = [load.started() for _ in range(4)]
    load.mean_duration_s = 6.0
    assert load.retry_after_s(num_queued=2) == 3  # 2 queued x 6 s / 4 in flight
    assert load.retry_after_s(num_queued=1000) == 60
    load.ended(started[0])
    assert load.in_flight == 3


def test_the_dashboard_queries_only_series_this_app_serves():
    import json
    import re
    from pathlib import Path

    from serve_app.deployments.metrics import VLLM_SERIES

    dashboard = json.loads((Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|total)$", "", n)
        for e in exprs
        for n in re.findall(r"(?:vllm:|modelopt_serve_)\w+", e)
    }
    served = {s.name for s in VLLM_SERIES.values()} | {
        "modelopt_serve_http_requests",
        "modelopt_serve_engine_start_seconds",
        "modelopt_serve_compile_cache_warm",
    }
    assert used <= served, used - served
    assert {
        "vllm:time_to_first_token_seconds",
        "vllm:kv_cache_usage_perc",
        "modelopt_serve_http_requests",
    } <= used


def test_refused_requests_do_not_shrink_the_mean_duration():
    """A request the queue refused took ~0 s: averaging it in made Retry-After 1 under overload."""
    load = ModelLoad(mean_duration_s=4.0, finished=10)
    refused = [load.started() for _ in range(17)]
    for started in refused:
        load.ended(started, admitted=False)
    assert load.mean_duration_s == 4.0 and load.in_flight == 0


def test_the_route_label_skips_routers_without_a_path():
    """FastAPI lists included routers, which have no .path: the counter crashed on every 401."""
    from fastapi import APIRouter, FastAPI

    from serve_app.router.metrics import RequestMetrics

    api = FastAPI()

    @api.get("/v1/models")
    async def models() -> dict:
        return {}

    api.include_router(APIRouter())
    from starlette.routing import Match

    included = type("_IncludedRouter", (), {"matches": lambda self, scope: (Match.FULL, {})})()
    api.routes.insert(0, included)  # as FastAPI 0.165 lists an included router: it matches anything
    metrics = RequestMetrics(None, routes=lambda: api.routes)
    scope = {"type": "http", "path": "/v1/models", "root_path": "", "method": "GET"}
    assert metrics._route(scope) == "/v1/models"
    api.routes.pop(0)
    assert metrics._route({**scope, "path": "/nowhere"}) == "unmatched"
