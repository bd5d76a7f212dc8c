"""/metrics' scrape of the metrics agents, over real HTTP: the merge runs in a worker process, so
a scrape does not stall the router's event loop, and a dead worker is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_app.router import metrics as router_metrics
from serve_app.router.metrics import ClusterMetrics

from .test_metrics_merge import RAY


def big_agent(replicas: int) -> str:
    """An agent's text with ``replicas`` vLLM replicas' TTFT histograms (12 buckets each)."""
    lines = [
        "# HELP ray_vllm_time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE ray_vllm_time_to_first_token_seconds histogram",
    ]
    for r in range(replicas):
        labels = f'{RAY.format(w=r)},ReplicaId="r{r}",engine="0",model_name="m{r % 7}"'
        for le in (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, "+Inf"):
            lines.append(f'ray_vllm_time_to_first_token_seconds_bucket{{{labels},le="{le}"}} {r}.0')
        lines.append(f"ray_vllm_time_to_first_token_seconds_sum{{{labels}}} 1.5")
        lines.append(f"ray_vllm_time_to_first_token_seconds_count{{{labels}}} {r}.0")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def agent_server(text: str) -> Iterator[str]:
    body = text.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()


async def _max_loop_lag_ms(work: asyncio.Future) -> float:
    """The longest a 1 ms sleep on this loop overran while ``work`` ran."""
    worst = 0.0
    while not work.done():
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - start - 0.001)
    await work
    return worst * 1000


def test_a_scrape_does_not_stall_the_event_loop():
    """Merging ~1 MB of agent text takes a few hundred ms of pure Python. In a thread of the
    router's process it held the GIL and stalled the loop that relays every stream (80 ms and
    more here); in the worker process the loop keeps its pace."""
    with agent_server(big_agent(1000)) as url:
        cluster = ClusterMetrics(targets=lambda: [url])

        async def scrape() -> tuple[bytes, float, float]:
            await cluster.render()  # starts the worker (an interpreter start, not measured)
            await asyncio.sleep(router_metrics.CACHE_S)
            started = time.perf_counter()
            render = asyncio.ensure_future(cluster.render())
            lag_ms = await _max_loop_lag_ms(render)
            return render.result(), lag_ms, time.perf_counter() - started

        try:
            body, lag_ms, scrape_s = asyncio.run(scrape())
        finally:
            cluster.close()
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert len(families["vllm:time_to_first_token_seconds"].samples) == 1000 * 14
    assert scrape_s > 0.1, "the document is too small to show a stall"
    assert lag_ms < 40, f"the loop stalled {lag_ms:.0f} ms during a {scrape_s:.2f} s scrape"


def test_a_dead_merge_worker_is_replaced(caplog: pytest.LogCaptureFixture):
    with agent_server(big_agent(3)) as url:
        cluster = ClusterMetrics(targets=lambda: [url])

        async def render_kill_render() -> bytes:
            await cluster.render()
            assert cluster._pool is not None
            for pid in list(cluster._pool._processes):  # as the OOM killer would
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(router_metrics.CACHE_S)
            return await cluster.render()

        try:
            with caplog.at_level(logging.WARNING, logger="ray.serve"):
                body = asyncio.run(render_kill_render())
        finally:
            cluster.close()
    assert b"vllm:time_to_first_token_seconds_bucket" in body
    assert "the /metrics merge worker died; starting another" in caplog.text


def test_close_ends_the_merge_worker():
    with agent_server(big_agent(3)) as url:
        cluster = ClusterMetrics(targets=lambda: [url])
        asyncio.run(cluster.render())
        assert cluster._pool is not None
        pids = list(cluster._pool._processes)
        cluster.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.1)
    assert pids and not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
