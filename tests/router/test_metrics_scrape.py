"""/metrics' scrape of the metrics agents, over real HTTP: the merge runs in a helper process, so
a scrape does not stall the router's event loop; a failed helper falls back to a thread; and no
helper outlives a router that dies mid-scrape. A merge past its time limit, or too large to
merge in the router's own process, is answered 503."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_app.errors import MetricsUnavailableError
from serve_app.router import metrics as router_metrics
from serve_app.router.metrics import ClusterMetrics
from tests.processes import running_with

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
    """Merging ~2 MB of agent text takes about a second of pure Python. In a thread of the
    router's process it held the GIL and stalled the loop that relays every stream (77-79 ms
    here); in the helper process the loop keeps its pace."""
    with agent_server(big_agent(1000)) as url:
        cluster = ClusterMetrics(targets=lambda: [url])

        async def scrape() -> tuple[bytes, float, float]:
            await cluster.render()  # the first imports httpx and opens its client: not measured
            await asyncio.sleep(router_metrics.CACHE_S)
            started = time.perf_counter()
            render = asyncio.ensure_future(cluster.render())
            lag_ms = await _max_loop_lag_ms(render)
            return render.result(), lag_ms, time.perf_counter() - started

        body, lag_ms, scrape_s = asyncio.run(scrape())
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert len(families["vllm:time_to_first_token_seconds"].samples) == 1000 * 14
    assert scrape_s > 0.1, "the document is too small to show a stall"
    assert lag_ms < 40, f"the loop stalled {lag_ms:.0f} ms during a {scrape_s:.2f} s scrape"


@pytest.mark.parametrize("failure", ["cannot_start", "died"])
def test_a_failed_helper_falls_back_to_a_thread_and_the_next_scrape_uses_a_helper(
    failure, monkeypatch, caplog
):
    if failure == "cannot_start":
        monkeypatch.setattr(sys, "executable", "/nonexistent/python")  # as with too many open files
        reason = "(ChildProcessError: could not start a helper process: [Errno 2] No such file"
    else:  # killed while idle, as by the OOM killer
        reason = "(ChildProcessError: worker process for serve_app.router.metrics_merge:merge exited)"
    with agent_server(big_agent(3)) as url:
        cluster = ClusterMetrics(targets=lambda: [url])

        async def twice() -> tuple[bytes, str, bytes]:
            if failure == "died":
                await cluster.render()
                helper = cluster._merger._queue()._queue[0].proc
                os.kill(helper.pid, signal.SIGKILL)
                helper.wait()
                await asyncio.sleep(router_metrics.CACHE_S)
            first = await cluster.render()
            logged = caplog.text
            monkeypatch.undo()  # the cause is gone: the next scrape merges in a helper again
            await asyncio.gather(*cluster._merger._replacing)
            await asyncio.sleep(router_metrics.CACHE_S)
            return first, logged, await asyncio.wait_for(cluster.render(), 30)

        with caplog.at_level(logging.WARNING, logger="ray.serve"):
            first, logged, second = asyncio.run(twice())
    for body in (first, second):
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert len(families["vllm:time_to_first_token_seconds"].samples) == 3 * 14
    assert "/metrics: merging in a helper process failed" in logged
    assert reason in logged
    assert caplog.text == logged, "the second scrape fell back too"


def _scrape_fails_then_recovers(cluster: ClusterMetrics, monkeypatch) -> tuple[str, bytes]:
    """The first scrape's MetricsUnavailableError message; then, the cause undone, the next body."""

    async def twice() -> tuple[str, bytes]:
        with pytest.raises(MetricsUnavailableError) as failed:
            await cluster.render()
        monkeypatch.undo()
        await asyncio.gather(*cluster._merger._replacing)
        return str(failed.value), await asyncio.wait_for(cluster.render(), 30)

    return asyncio.run(twice())


def test_a_merge_past_its_time_limit_is_503_and_not_merged_again_in_the_router(monkeypatch, caplog):
    """It used to be merged again in a thread: a document that took the helper 30 s would then
    stall the router's loop, and every stream it relays, for longer."""
    monkeypatch.setattr(router_metrics, "MERGE_TIMEOUT_S", 0.001)
    merged_here = []
    monkeypatch.setattr(router_metrics, "merge", lambda documents: merged_here.append(1) or b"")
    with agent_server(big_agent(3)) as url:
        cluster = ClusterMetrics(targets=lambda: [url])
        with caplog.at_level(logging.WARNING, logger="ray.serve"):
            message, body = _scrape_fails_then_recovers(cluster, monkeypatch)
    size = len(big_agent(3))
    took = f"merging the metrics agents' text ({size} characters) took longer than 0.001 s"
    assert message == f"{took}; retry later"
    assert f"/metrics answered 503: {message}" in caplog.text
    assert merged_here == []
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert len(families["vllm:time_to_first_token_seconds"].samples) == 3 * 14


def test_a_failed_helper_with_too_much_text_to_merge_here_is_503(monkeypatch, caplog):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    monkeypatch.setattr(router_metrics, "THREAD_MERGE_MAX_CHARS", 1000)
    with agent_server(big_agent(3)) as url:
        cluster = ClusterMetrics(targets=lambda: [url])
        with caplog.at_level(logging.WARNING, logger="ray.serve"):
            message, body = _scrape_fails_then_recovers(cluster, monkeypatch)
    assert message == (
        "the cluster's metrics could not be merged: a helper process of the router failed; retry later"
    )
    assert (
        "/metrics answered 503: merging in a helper process failed (ChildProcessError: could not start"
        " a helper process: [Errno 2] No such file or directory: '/nonexistent/python'), and the"
        f" agents' text ({len(big_agent(3))} characters) is too large to merge in the router's process"
        " (at most 1000)"
    ) in caplog.text
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert len(families["vllm:time_to_first_token_seconds"].samples) == 3 * 14


PARENT = """
import asyncio, os, signal, sys
sys.path.insert(0, {root!r})
from tests.router.test_metrics_scrape import agent_server, big_agent
from serve_app.router.metrics import ClusterMetrics

async def main(url):
    render = asyncio.ensure_future(ClusterMetrics(targets=lambda: [url]).render())
    await asyncio.sleep(1.0)  # the helper is merging: die as `ray stop --force` kills
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    with agent_server(big_agent(3000)) as url:
        asyncio.run(main(url))
"""


def test_no_helper_outlives_a_router_killed_mid_scrape(tmp_path):
    """A multiprocessing pool worker waited forever on its pipe once its parent was SIGKILLed
    (116 MB each, found by a review of an earlier version); the helper finds its pipes closed and
    exits."""
    marker = f"merge-test-{os.getpid()}-{time.monotonic_ns()}"
    root = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(root=root))
    parent = subprocess.run(
        [sys.executable, str(script)], env={**os.environ, "MERGE_TEST_MARKER": marker}, timeout=60
    )
    assert parent.returncode == -signal.SIGKILL
    seen = _merge_processes(marker)
    deadline = time.monotonic() + 30
    while _merge_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _merge_processes(marker)
    assert seen, "the parent died before its helper started: nothing was tested"


def _merge_processes(marker: str) -> list[int]:
    return [pid for pid, _ in running_with(b"serve_app.workers", f"MERGE_TEST_MARKER={marker}".encode())]
