"""`serve run models.yaml` exactly as a user runs it: Ray's own CLI, a YAML in its own folder.
`serve run` starts with SIGINT at its default action, as from a terminal: a shell that runs a
job in the background without job control starts it with SIGINT ignored, and an ignored signal
stays ignored across exec, so Ctrl-C would otherwise never reach it (seen when `.ci/run` was
started in the background: both Ctrl-C tests timed out)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serve_app.app import FAST_INGRESS_ENV, HAPROXY_CLIENT_TIMEOUT_ENV
from tests.serve_fixtures import free_port, start_server, wait_ready, write_models_yaml

# The Makefile's INGRESS modes: Ray Serve's proxy, and HAProxy forwarding to the router replica.
# HAProxy's client timeout is make serve's 60 s cut to 5 here, so its test takes seconds.
INGRESS_ENV = {"proxy": {}, "haproxy": {**FAST_INGRESS_ENV, HAPROXY_CLIENT_TIMEOUT_ENV: "5"}}


@pytest.fixture(scope="module", params=list(INGRESS_ENV))
def served_yaml(request, tmp_path_factory, qwen2_checkpoint, llama_checkpoint):
    folder = tmp_path_factory.mktemp("deploy")
    (folder / "models").mkdir()
    (folder / "models" / "qwen").symlink_to(qwen2_checkpoint)
    (folder / "models" / "llama").symlink_to(llama_checkpoint)
    port = free_port()
    models = [
        {"name": "qwen", "checkpoint": "models/qwen", "engine": "cpu", "max_model_len": 512},
        {"name": "llama", "checkpoint": "models/llama", "max_model_len": 512},  # engine: auto -> cpu here
    ]
    path = write_models_yaml(folder, models, port=port)
    serve = Path(sys.executable).with_name("serve")
    # From the YAML's folder, as `make serve` does from the repository root.
    process = start_server([str(serve), "run", str(path)], folder, INGRESS_ENV[request.param])
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout_s=300)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate(timeout=30)[0]
        raise AssertionError(f"serve run never became ready:\n{output[-6000:]}") from None
    yield base, process, request.param
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_serve_run_serves_both_models_through_the_openai_client(served_yaml):
    from openai import OpenAI

    base, _, _ = served_yaml
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list().data} == {"qwen", "llama"}
    for model in ("qwen", "llama"):
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            extra_body={"ignore_eos": True},
        )
        assert reply.usage.completion_tokens == 4


def test_haproxy_closes_a_connection_whose_headers_never_end(served_yaml):
    """Slowloris: a request that never finishes its headers. HAProxy answers 408 and closes after
    its client timeout (make serve: 60 s; 5 s here). Ray Serve's own proxy has no such timeout
    (docs/hardening.md, "Still open"), so only the haproxy ingress is checked."""
    import socket
    import time
    from urllib.parse import urlsplit

    base, _, ingress = served_yaml
    if ingress != "haproxy":
        pytest.skip("Ray Serve's proxy (uvicorn) has no timeout for request headers")
    url = urlsplit(base)
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=60) as conn:
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    assert time.monotonic() - started < 30


def test_ctrl_c_stops_serve_run_and_its_cluster(served_yaml):
    base, process, ingress = served_yaml
    os.killpg(process.pid, signal.SIGINT)
    output = process.communicate(timeout=90)[0]
    # Refused, not answered: no proxy (nor HAProxy) is left holding the port.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/healthz", timeout=5)
    # Only the slow ingress is warned about, with the variables that fix it.
    warned = "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_REPLICA" in output
    assert warned == (ingress == "proxy"), output[-4000:]
