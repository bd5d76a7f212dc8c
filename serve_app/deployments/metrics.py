"""A model replica's Prometheus series, recorded with ``ray.util.metrics``.

Every series goes through Ray's metrics pipeline: each process hands its values to its node's
metrics agent, which serves them in Prometheus format (on ``MetricsExportPort``), and the router's
``GET /metrics`` gathers them from every node (router/metrics.py). So one path serves both engines:

- **vLLM engine**: vLLM's own ``RayPrometheusStatLogger`` (``vllm/v1/metrics/ray_wrappers.py``,
  what Ray Serve LLM uses), given to ``AsyncLLM.from_engine_args(stat_loggers=...)``. vLLM
  records every ``vllm:*`` series; nothing is counted twice here.
- **CPU reference engine**: ``RayEngineStatLogger`` below records the same series from the
  engine's stats (engines/stats.py), with vLLM 0.24's names, help texts, buckets and labels
  (``model_name``, ``engine``, ``ReplicaId``), so a dashboard cannot tell the two apart.

Ray refuses ``:`` in metric names, so, as vLLM's Ray wrappers do, ``vllm:x`` is recorded as
``vllm_x``, and Ray's exporter prefixes ``ray_``; the router's ``/metrics`` gives the series their
vLLM names back. Both engines also get ``modelopt_serve_engine_start_seconds`` and (vLLM)
``modelopt_serve_compile_cache_warm``.

Sources: vllm/v1/metrics/loggers.py (0.24.0) ``PrometheusStatLogger`` for names and buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.engines.stats import IterationStats, SchedulerStats

# vLLM 0.24's buckets (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
VLLM_LABELS = ("model_name", "engine", "ReplicaId")  # vLLM's labelnames + the Ray wrappers' ReplicaId


@dataclass(frozen=True)
class Series:
    """One vLLM series: its vLLM name, kind, help text and (histograms) buckets."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    buckets: tuple[float, ...] = ()


# The vLLM 0.24 series the CPU engine produces (help texts as vLLM's).
VLLM_SERIES = {
    "running": Series("vllm:num_requests_running", "gauge", "Number of requests in model execution batches."),
    "waiting": Series("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    "kv_cache": Series(
        "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."
    ),
    "preemptions": Series(
        "vllm:num_preemptions", "counter", "Cumulative number of preemption from the engine."
    ),
    "prompt_tokens": Series("vllm:prompt_tokens", "counter", "Number of prefill tokens processed."),
    "generation_tokens": Series(
        "vllm:generation_tokens", "counter", "Number of generation tokens processed."
    ),
    "success": Series("vllm:request_success", "counter", "Count of successfully processed requests."),
    "ttft": Series(
        "vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
        TTFT_BUCKETS,
    ),
    "itl": Series(
        "vllm:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.",
        ITL_BUCKETS,
    ),
    "e2e": Series(
        "vllm:e2e_request_latency_seconds", "histogram", "Histogram of e2e request latency in seconds.",
        REQUEST_LATENCY_BUCKETS,
    ),
    "queue": Series(
        "vllm:request_queue_time_seconds", "histogram",
        "Histogram of time spent in WAITING phase for request.", REQUEST_LATENCY_BUCKETS,
    ),
    "inference": Series(
        "vllm:request_inference_time_seconds", "histogram",
        "Histogram of time spent in RUNNING phase for request.", REQUEST_LATENCY_BUCKETS,
    ),
    "prefill": Series(
        "vllm:request_prefill_time_seconds", "histogram",
        "Histogram of time spent in PREFILL phase for request.", REQUEST_LATENCY_BUCKETS,
    ),
    "decode": Series(
        "vllm:request_decode_time_seconds", "histogram",
        "Histogram of time spent in DECODE phase for request.", REQUEST_LATENCY_BUCKETS,
    ),
}  # fmt: skip


def ray_name(vllm_name: str) -> str:
    """The name Ray records a vLLM series under (``vllm:x`` -> ``vllm_x``), as vLLM's
    ``RayPrometheusMetric._get_sanitized_opentelemetry_name`` does."""
    return vllm_name.replace(":", "_")


def replica_id() -> str:
    """This Serve replica's unique id (vLLM's ``ReplicaId`` label); "" outside a replica."""
    from ray import serve

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # not in a replica (unit tests, a driver)
        return ""


def _make(series: Series, tag_keys: tuple[str, ...]) -> Any:
    from ray.util import metrics

    name = ray_name(series.name)
    if series.kind == "counter":
        return metrics.Counter(name, series.help, tag_keys=tag_keys)
    if series.kind == "gauge":
        return metrics.Gauge(name, series.help, tag_keys=tag_keys)
    return metrics.Histogram(name, series.help, boundaries=list(series.buckets), tag_keys=tag_keys)


class RayEngineStatLogger:
    """The CPU engine's ``StatLogger`` (engines/stats.py): vLLM's series through Ray's metrics.

    What vLLM's ``PrometheusStatLogger.record`` does with the same stats: gauges from the
    scheduler state, counters and latency histograms from each step, phases and
    ``request_success{finished_reason}`` from each finished request."""

    def __init__(self, model_name: str, engine_index: int = 0) -> None:
        self.tags = {"model_name": model_name, "engine": str(engine_index), "ReplicaId": replica_id()}
        self.metrics = {key: _make(series, VLLM_LABELS) for key, series in VLLM_SERIES.items()}
        self.metrics["success"] = _make(VLLM_SERIES["success"], (*VLLM_LABELS, "finished_reason"))

    def record(self, scheduler_stats: SchedulerStats | None, iteration_stats: IterationStats | None) -> None:
        m, tags = self.metrics, self.tags
        if scheduler_stats is not None:
            m["running"].set(scheduler_stats.num_running_reqs, tags)
            m["waiting"].set(scheduler_stats.num_waiting_reqs, tags)
            m["kv_cache"].set(scheduler_stats.kv_cache_usage, tags)
        if iteration_stats is None:
            return
        for key, value in (
            ("prompt_tokens", iteration_stats.num_prompt_tokens),
            ("generation_tokens", iteration_stats.num_generation_tokens),
            ("preemptions", iteration_stats.num_preempted_reqs),
        ):
            if value:  # Ray's Counter.inc refuses 0, as vLLM's RayCounterWrapper skips it
                m[key].inc(value, tags)
        for ttft in iteration_stats.time_to_first_tokens_iter:
            m["ttft"].observe(ttft, tags)
        for itl in iteration_stats.inter_token_latencies_iter:
            m["itl"].observe(itl, tags)
        for finished in iteration_stats.finished_requests:
            m["success"].inc(1, {**tags, "finished_reason": finished.finish_reason})
            m["e2e"].observe(finished.e2e_latency, tags)
            m["queue"].observe(finished.queued_time, tags)
            m["inference"].observe(finished.inference_time, tags)
            m["prefill"].observe(finished.prefill_time, tags)
            m["decode"].observe(finished.decode_time, tags)


def _connected() -> bool:
    """Ray metrics need a Ray worker (a replica); outside one (unit tests) nothing is recorded."""
    import ray

    return ray.is_initialized()


def engine_stat_loggers(engine_cls: type, model_name: str) -> list[Any]:
    """What ``engine_cls`` records its metrics through: vLLM's ``RayPrometheusStatLogger`` class
    (a vLLM ``StatLoggerFactory``) for the vLLM engine, else a ``RayEngineStatLogger``; none
    outside Ray."""
    from serve_app.engines.vllm_engine import VLLMEngine

    if not _connected():
        return []

    if issubclass(engine_cls, VLLMEngine):
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        return [RayPrometheusStatLogger]
    return [RayEngineStatLogger(model_name)]


def record_engine_start(model_name: str, seconds: float, compile_cache_warm: bool | None) -> None:
    """``modelopt_serve_engine_start_seconds`` (how long ``engine.start()`` took) and, for
    engines with a compile cache, ``modelopt_serve_compile_cache_warm`` (1 warm, 0 cold)."""
    from ray.util import metrics

    if not _connected():
        return
    tags = {"model_name": model_name, "ReplicaId": replica_id()}
    keys = tuple(tags)
    start = metrics.Gauge(
        "modelopt_serve_engine_start_seconds",
        "Seconds the replica's engine took to start (load, compile, profile).",
        tag_keys=keys,
    )
    start.set(seconds, tags)
    if compile_cache_warm is not None:
        warm = metrics.Gauge(
            "modelopt_serve_compile_cache_warm",
            "1 when the replica's engine started with a warm torch.compile cache, else 0.",
            tag_keys=keys,
        )
        warm.set(1.0 if compile_cache_warm else 0.0, tags)
