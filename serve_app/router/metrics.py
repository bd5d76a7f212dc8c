"""``GET /metrics``: the cluster's series in Prometheus text format, on the served port.

How the numbers get here (docs/operations.md, "Metrics"): every process records with
``ray.util.metrics`` (vLLM's ``RayPrometheusStatLogger`` in vLLM replicas, ``RayEngineStatLogger``
in CPU replicas, the request counter below in router replicas). Ray's core worker hands them to its
node's metrics agent every ``metrics_report_interval_ms`` (10 s by default), and the agent serves
them at ``http://<node>:<MetricsExportPort>/metrics``. ``ClusterMetrics`` asks Ray for the alive
nodes, scrapes every agent, keeps our families and renders them as one Prometheus document:

- ``ray_vllm_*`` -> ``vllm:*`` (vLLM's own names; Ray refuses ``:`` so vLLM records ``vllm_*``),
- ``ray_modelopt_serve_*`` -> ``modelopt_serve_*`` (this app's own series),
- ``ray_serve_*`` unchanged (Ray Serve's replica and handle series, as Ray's dashboards name them).

Series keep ``model_name``, ``ReplicaId`` (one per replica), ``NodeAddress`` and ``WorkerId``;
Ray's bookkeeping labels (``SessionName``, ``Version``, ``Component``, ``otel_scope_*``) are
dropped. Counters vLLM creates at zero (``vllm:num_preemptions_total``, prompt and generation
tokens) but Ray exports only after a first increment get a 0 sample per replica, as in bare vLLM.

Ray records a histogram's ``_sum`` from bucket midpoints (ray/_private/telemetry/
open_telemetry_metric_recorder.py), so sums and the means made from them are approximate; counts
and buckets are exact. That holds for vLLM under Ray Serve LLM too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serve_app.errors import MetricsUnavailableError
from serve_app.router.auth import route_path
from serve_app.router.metrics_merge import merge
from serve_app.workers import WorkerPool

__all__ = ["CONTENT_TYPE", "ClusterMetrics", "RequestMetrics", "merge"]

logger = logging.getLogger("ray.serve")

CACHE_S = 1.0  # one scrape of the cluster serves every /metrics call within this
NODES_TTL_S = 10.0
SCRAPE_TIMEOUT_S = 3.0
MERGE_TIMEOUT_S = 30.0
# The most agent text merged in the router's own process when the helper fails: there, the merge's
# GC pauses under the GIL stall the event loop (77-81 ms for 1.9 MB; up to 100 ms measured for
# 8.3 M characters).
THREAD_MERGE_MAX_CHARS = 8 * 2**20
CONTENT_TYPE = CONTENT_TYPE_LATEST
REQUESTS_NAME = "modelopt_serve_http_requests"
REQUESTS_HELP = "HTTP requests the router answered, by route, method, status code and model."


def metrics_targets() -> list[str]:
    """``http://<ip>:<MetricsExportPort>/metrics`` of every alive Ray node (``ray.nodes()``)."""
    import ray

    return [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        for node in ray.nodes()
        if node.get("Alive") and node.get("MetricsExportPort")
    ]


class ClusterMetrics:
    """Scrapes every node's metrics agent; one scrape (single-flight) serves calls within CACHE_S.

    ``targets`` returns the agents' URLs (``metrics_targets``; asked again every NODES_TTL_S). A
    node that does not answer within SCRAPE_TIMEOUT_S is left out of that scrape and logged.

    The merge (router/metrics_merge.py) runs in a helper process of its own (``serve_app.workers``,
    as large request bodies are parsed; started at the first scrape, ended with the router's
    process). In a thread of the router's process it held the GIL: a 1.9 MB merge stalled the
    event loop that relays every stream for 77-79 ms (``tests/router/test_metrics_scrape.py``; a
    few ms in the helper), and a scrape every 1.1 s of `make serve`'s demo fleet raised a trivial
    request's p99 through the router from 3-4 ms to 16-23 ms (docs/benchmarks.md).

    A helper that fails (cannot start, dies) is replaced; that scrape merges in a thread as
    before when the text is at most THREAD_MERGE_MAX_CHARS, and a warning says why. A merge that
    outruns MERGE_TIMEOUT_S (about 90 MB of text), or a helper failure with more than
    THREAD_MERGE_MAX_CHARS of text, raises ``MetricsUnavailableError`` (503) rather than merge
    here and stall every stream longer (about a second for 90 MB): a Prometheus scrape has long
    given up by then anyway (its default timeout is 10 s)."""

    def __init__(self, targets: Callable[[], list[str]] = metrics_targets) -> None:
        self._targets_fn = targets
        self._targets: list[str] = []
        self._targets_at = -NODES_TTL_S
        self._body = b""
        self._body_at = -CACHE_S
        self._lock = asyncio.Lock()
        self._client: Any = None
        self._merger = WorkerPool(1)

    async def render(self) -> bytes:
        async with self._lock:
            if time.monotonic() - self._body_at >= CACHE_S:
                self._body = await self._merge(await self._scrape_all())
                self._body_at = time.monotonic()
            return self._body

    async def _merge(self, documents: list[str]) -> bytes:
        if not documents:
            return merge(documents)
        size = sum(len(document) for document in documents)
        try:
            return await self._merger.call(
                "serve_app.router.metrics_merge:merge", (documents,), MERGE_TIMEOUT_S
            )
        except TimeoutError:
            message = (
                f"merging the metrics agents' text ({size} characters) took longer than"
                f" {MERGE_TIMEOUT_S:g} s; retry later"
            )
            logger.warning("/metrics answered 503: %s", message)
            raise MetricsUnavailableError(message) from None
        except (OSError, ChildProcessError) as error:
            reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            if size > THREAD_MERGE_MAX_CHARS:
                logger.warning(
                    "/metrics answered 503: merging in a helper process failed (%s), and the agents'"
                    " text (%d characters) is too large to merge in the router's process (at most %d)",
                    reason,
                    size,
                    THREAD_MERGE_MAX_CHARS,
                )
                raise MetricsUnavailableError(
                    "the cluster's metrics could not be merged: a helper process of the router"
                    " failed; retry later"
                ) from error
            logger.warning("/metrics: merging in a helper process failed (%s); merging here", reason)
            return await asyncio.to_thread(merge, documents)

    async def _scrape_all(self) -> list[str]:
        import httpx

        if time.monotonic() - self._targets_at >= NODES_TTL_S:
            self._targets = await asyncio.to_thread(self._targets_fn)
            self._targets_at = time.monotonic()
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S)
        results = await asyncio.gather(
            *(self._client.get(url) for url in self._targets), return_exceptions=True
        )
        documents = []
        for url, result in zip(self._targets, results, strict=True):
            if isinstance(result, BaseException) or result.status_code != 200:
                logger.warning("metrics agent %s left out of /metrics: %s", url, result)
                self._targets_at = -NODES_TTL_S  # a node may have gone; ask Ray again next time
            else:
                documents.append(result.text)
        return documents


def _application() -> str:
    from ray import serve

    try:
        return serve.get_replica_context().app_name
    except Exception:  # outside a replica
        return ""


class RequestMetrics:
    """ASGI middleware: counts every answered request in ``modelopt_serve_http_requests_total``.

    Labels: ``route`` (the route's template, e.g. ``/v1/models/{model_id:path}``, or
    ``unmatched``), ``method``, ``status_code``, ``model_name`` (the served name a route resolved,
    "" for none), ``application`` (the Serve application) and ``ReplicaId``. ``routes`` returns
    the app's routes, to name a request that was answered before routing (401, 413)."""

    def __init__(self, app: Any, routes: Callable[[], list[Any]]) -> None:
        self.app = app
        self.routes = routes
        self._counter: Any = None
        self._replica = ""
        self._application = ""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._count(scope, status)

    def _count(self, scope: dict, status: int) -> None:
        import ray

        if not ray.is_initialized():
            return
        if self._counter is None:
            from ray.util import metrics

            from serve_app.deployments.metrics import replica_id

            keys = ("route", "method", "status_code", "model_name", "application", "ReplicaId")
            self._counter = metrics.Counter(REQUESTS_NAME, REQUESTS_HELP, tag_keys=keys)
            self._replica = replica_id()
            self._application = _application()
        tags = {
            "route": self._route(scope),
            "method": scope.get("method", ""),
            "status_code": str(status),
            "model_name": (scope.get("state") or {}).get("model_name", ""),
            "application": self._application,
            "ReplicaId": self._replica,
        }
        self._counter.inc(1, tags)

    def _route(self, scope: dict) -> str:
        route = scope.get("route")
        if route is not None:
            return getattr(route, "path", "unmatched")
        from starlette.routing import Match

        probe = {**scope, "path": route_path(scope), "root_path": ""}
        for candidate in self.routes():
            # FastAPI also lists routers it included, which have no path of their own.
            path = getattr(candidate, "path", None)
            if path is not None and candidate.matches(probe)[0] == Match.FULL:
                return path
        return "unmatched"
