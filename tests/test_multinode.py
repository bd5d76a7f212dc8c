"""Several Ray nodes: replicas pinned to nodes by custom resources, and a checkpoint that one
node lacks. Two real nodes from `ray start` on this machine (tests/two_nodes.py says how they
are kept apart from other Ray instances and stopped).

A checkpoint "on one node only", simulated honestly: both nodes share this machine's
filesystem, but a process resolves ``/proc/self/cwd`` through its own working directory, and
Ray workers inherit the working directory of the raylet that spawned them, which is where
`ray start` ran (``<root>/node_a`` or ``<root>/node_b``). The registry's checkpoint path is a
symlink to ``/proc/self/cwd/models/qwen``; only node_a's folder holds ``models/qwen``. So the
same path is a checkpoint for the driver (started in node_a's folder, where preflight runs) and
for node_a's workers, and missing for node_b's workers, as on two machines where only one has
the files.
"""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from tests.serve_fixtures import wait_ready, write_models_yaml
from tests.two_nodes import TwoNodeCluster

pytestmark = pytest.mark.multinode


@pytest.fixture(scope="module")
def cluster(qwen2_checkpoint, llama_checkpoint):
    nodes = TwoNodeCluster()
    try:
        nodes.start()
        (nodes.root / "node_a" / "models" / "qwen").symlink_to(qwen2_checkpoint)
        yield nodes
    finally:
        nodes.stop()
    assert nodes.marked_pids() == []


def node_ids(cluster: TwoNodeCluster) -> dict[str, str]:
    """{"node_a": node id, "node_b": node id, "ip": the nodes' IP}, from Ray's state API."""
    from ray.util.state import list_nodes

    ids = {}
    for node in list_nodes(address=cluster.dashboard, filters=[("state", "=", "ALIVE")]):
        for resource in ("node_a", "node_b"):
            if resource in node.resources_total:
                ids[resource] = node.node_id
                ids["ip"] = node.node_ip
    return ids


def replica_nodes(cluster: TwoNodeCluster, fleet: str) -> dict[str, set[str]]:
    """{model: node ids of its alive replica actors}, from Ray's state API. Each model is its own
    application, ``<fleet>-<model>`` (tests/serve_fixtures.py)."""
    from ray.util.state import list_actors

    prefix = f"ServeReplica:{fleet}-"
    found: dict[str, set[str]] = {}
    for actor in list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")], limit=1000):
        if actor.class_name.startswith(prefix):
            app = actor.class_name[len(prefix) :].rsplit(":", 1)[0]
            found.setdefault(app, set()).add(actor.node_id)
    return found


def model(name: str, checkpoint: str, node: str) -> dict:
    return {
        "name": name,
        "checkpoint": checkpoint,
        "engine": "cpu",
        "max_model_len": 256,
        "resources": {"num_cpus": 0.5, "resources": {node: 0.1}},
    }


def test_replicas_run_on_the_node_their_custom_resource_names(cluster, tmp_path, llama_checkpoint):
    folder = cluster.root / "pinned"
    folder.mkdir()
    models = [
        model("qwen-a", str(cluster.root / "node_a" / "models" / "qwen"), "node_a"),
        model("llama-b", str(llama_checkpoint), "node_b"),
    ]
    path = write_models_yaml(folder, models, name="pinned", prefix="/", port=cluster.http_port)
    started = time.monotonic()
    done = cluster.deploy(path, cwd=cluster.root / "node_a")
    assert done.returncode == 0, done.stderr[-4000:]
    base = f"http://127.0.0.1:{cluster.http_port}"
    wait_ready(base, timeout_s=240)

    ids = node_ids(cluster)
    assert set(ids) == {"node_a", "node_b", "ip"} and ids["node_a"] != ids["node_b"]
    placed = replica_nodes(cluster, "pinned")
    assert placed["qwen-a"] == {ids["node_a"]}
    assert placed["llama-b"] == {ids["node_b"]}

    from openai import OpenAI

    with OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        for name in ("qwen-a", "llama-b"):
            reply = client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=3,
                extra_body={"ignore_eos": True},
            )
            assert reply.usage.completion_tokens == 3
    assert time.monotonic() - started < 300


def test_a_checkpoint_missing_on_the_replicas_node_names_the_node(cluster):
    ids = node_ids(cluster)
    folder = cluster.root / "split"
    folder.mkdir()
    only_on_a = folder / "qwen-only-on-node-a"
    only_on_a.symlink_to("/proc/self/cwd/models/qwen")
    models = [model("qwen-on-b", str(only_on_a), "node_b")]
    path = write_models_yaml(folder, models, name="split", prefix="/split", port=cluster.http_port)

    done = cluster.deploy(path, cwd=cluster.root / "node_a")
    expected = (
        f"model 'qwen-on-b': checkpoint {only_on_a} on node {ids['node_b']} ({ids['ip']}), where Ray "
        "placed this replica: the directory does not exist. Preflight read it on node "
        f"{ids['node_a']} ({ids['ip']}). Every node that may run this model's replicas needs the "
        "checkpoint at the same path (a shared filesystem, or a copy per node); or pin the model "
        "to nodes that have it with resources.resources."
    )
    # The driver waits for the applications (tests/serve_fixtures.py wait_deployed), as `serve.run`
    # did; Serve names the deployment only. Preflight's checkpoint_nodes warning is in the log of
    # the build task (Serve builds each application on the cluster, as for `serve run`).
    assert done.returncode != 0
    assert (
        "Deploying applications ['split-qwen-on-b'] failed: {'split-qwen-on-b': \"Failed to update "
        "the deployments ['ModelServer']." in done.stderr
    ), done.stderr[-4000:]

    # `serve status`: the application failed, and its message carries the replica's error.
    status = yaml.safe_load(cluster.serve_status())["applications"]["split-qwen-on-b"]
    assert status["status"] == "DEPLOY_FAILED"
    assert expected in status["deployments"]["ModelServer"]["message"]

    # /readyz of the app: not ready, naming the model.
    response = httpx.get(f"http://127.0.0.1:{cluster.http_port}/split/readyz", timeout=60)
    assert response.status_code == 503, response.text
    assert response.json()["models"]["qwen-on-b"]["ready"] is False
