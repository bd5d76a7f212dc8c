"""`make serve`'s runner (`python -m serve_app run`, serve_app/run.py): SIGTERM drains, then stops.

A stream in flight when SIGTERM arrives finishes (its model drains before anything shuts down),
the runner exits 0, and no process of the cluster - HAProxy included - is left behind."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from serve_app.app import FAST_INGRESS_ENV
from tests.processes import running_with
from tests.serve_fixtures import free_port, start_server, wait_ready, write_models_yaml


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (Linux /proc)."""
    lines = (
        (pid, command.replace(b"\0", b" ").decode(errors="replace"))
        for pid, command in running_with(text.encode())
    )
    return [f"{pid}: {line[:200]}" for pid, line in lines]


@pytest.fixture
def runner(request, tmp_path, qwen2_checkpoint):
    """``serve_app run`` on one CPU model; parametrize indirectly with extra model fields."""
    # A short temp dir of its own (Ray's socket paths must stay short): every process of this
    # cluster names it on its command line, which is how the test finds leftovers.
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/rgs")
    port = free_port()
    extra = getattr(request, "param", {})
    models = [
        {"name": "qwen", "checkpoint": str(qwen2_checkpoint), "engine": "cpu", "max_model_len": 2048, **extra}
    ]
    path = write_models_yaml(tmp_path, models, port=port)
    command = [sys.executable, "-m", "serve_app", "run", str(path)]
    process = start_server(command, tmp_path, {**FAST_INGRESS_ENV, "RAY_TMPDIR": ray_tmp})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout_s=300)
        yield base, process, ray_tmp
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for line in processes_mentioning(ray_tmp):  # never leave a cluster behind
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _stream_then_sigterm(
    base: str, process: subprocess.Popen, max_tokens: int, n: int = 1
) -> tuple[list[str], str]:
    """A stream of ``n`` choices of ``max_tokens``, SIGTERM to the runner once it flows: (its SSE
    events, the runner's output)."""
    body = {"model": "qwen", "prompt": "hi", "max_tokens": max_tokens, "n": n, "ignore_eos": True}
    body["stream"] = True
    events: list[str] = []
    first = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(60), "the stream never started"
    time.sleep(1.5)  # the runner polls /readyz every second

    process.send_signal(signal.SIGTERM)
    reader.join(timeout=120)
    output = process.communicate(timeout=180)[0]
    assert not reader.is_alive(), "the stream hung"
    return events, output


def test_sigterm_lets_a_stream_in_flight_finish_then_stops_everything(runner):
    base, process, ray_tmp = runner
    events, output = _stream_then_sigterm(base, process, max_tokens=1500)
    assert events[-1] == "[DONE]", output[-3000:]
    assert not any('"error"' in event for event in events), events[-3:]
    assert '"finish_reason":"length"' in events[-2].replace(" ", ""), events[-2]
    assert process.returncode == 0, output[-3000:]
    # drain_timeout_s defaults to 30 s; the runner allows Serve 15 s more to stop the replicas
    assert (
        "serve_app run: draining llm-qwen: streams in flight may finish for up to 30 s "
        "(drain_timeout_s), then they are ended; giving up after 45 s (Ctrl-C again to stop now)\n"
    ) in output
    assert "serve_app run: models drained" in output
    # In throughput mode Ray Serve buffers a replica's log lines (1,000 records): they are written
    # out, not lost with the replica (deployments/log_flush.py)
    # session_latest links to the session's folder: each file once
    found = glob.glob(f"{ray_tmp}/**/logs/serve/replica_llm-qwen_ModelServer_*.log", recursive=True)
    logs = sorted({os.path.realpath(log) for log in found})
    assert logs, "no model replica log file"
    text = "".join(Path(log).read_text() for log in logs)
    assert "model qwen ready in" in text  # written by the periodic flush
    assert text.count("model qwen stopped") == 1, text[-2000:]  # its last line, from ModelServer.__del__
    assert f"serve_app run: ready: {base}/v1 serves qwen\n" in output
    # The builder's warning reached only the controller's log; an operator watches the console.
    assert (
        "serve_app run: warning: HAProxy ingress: its stats page (port 8404) and Prometheus metrics"
        " (port 9101) listen on all interfaces without authentication"
    ) in output
    time.sleep(1)
    assert processes_mentioning(ray_tmp) == [], output[-3000:]


@pytest.mark.parametrize("runner", [{"drain_timeout_s": 2}], indirect=True)
def test_a_stream_longer_than_drain_timeout_s_is_ended_and_the_runner_says_so(runner):
    """A drain that ran out is not a clean stop: the stream ends with an error event, and the
    runner says so and exits 1 (before, it printed "models drained" and exited 0)."""
    base, process, ray_tmp = runner
    # eight choices of 2,000 tokens: many seconds on the CPU engine, well past the 2 s
    events, output = _stream_then_sigterm(base, process, max_tokens=2000, n=8)
    assert events[-1] == "[DONE]", output[-3000:]
    assert '"error"' in events[-2], events[-3:]
    assert process.returncode == 1, output[-3000:]
    assert (
        "serve_app run: draining llm-qwen: streams in flight may finish for up to 2 s "
        "(drain_timeout_s), then they are ended; giving up after 17 s (Ctrl-C again to stop now)\n"
    ) in output
    ended = r"serve_app run: models stopped after \d+ s: streams still open at drain_timeout_s \(2 s\) were"
    assert re.search(ended + r" ended\n", output), output[-3000:]
    assert "models drained" not in output
    time.sleep(1)
    assert processes_mentioning(ray_tmp) == [], output[-3000:]
