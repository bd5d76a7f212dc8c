"""Replicas scale out under load, as the registry's autoscaling section says."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.serve_fixtures import start_app_from_yaml, wait_ready, write_models_yaml


@pytest.fixture(scope="module")
def scaling_app(serve_cluster, tmp_path_factory, qwen2_checkpoint):
    folder = tmp_path_factory.mktemp("scaling")
    models = [
        {
            "name": "scaler",
            "checkpoint": str(qwen2_checkpoint),
            "engine": "cpu",
            "max_model_len": 512,
            "autoscaling": {
                "min_replicas": 1,
                "max_replicas": 2,
                "target_ongoing_requests": 1,
                "upscale_delay_s": 0,
                "downscale_delay_s": 600,
            },
        }
    ]
    start_app_from_yaml(write_models_yaml(folder, models, name="scaling", prefix="/scaling"))
    base = f"{serve_cluster}/scaling"
    wait_ready(base)
    return base


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def test_sustained_load_beyond_the_target_adds_a_replica(scaling_app):
    assert running_replicas("scaling-scaler", "ModelServer") == 1
    body = {"model": "scaler", "prompt": "Hello", "max_tokens": 200, "ignore_eos": True}
    stop = threading.Event()

    def keep_busy(_: int) -> list[int]:
        statuses = []
        while not stop.is_set():
            statuses.append(httpx.post(f"{scaling_app}/v1/completions", json=body, timeout=300).status_code)
        return statuses

    # Serve averages ongoing requests over a look-back window, so the load must last a while.
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(keep_busy, i) for i in range(4)]
        while running_replicas("scaling-scaler", "ModelServer") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        scaled = running_replicas("scaling-scaler", "ModelServer")
        stop.set()
        statuses = [status for f in futures for status in f.result()]
    assert scaled == 2
    assert set(statuses) == {200}
