"""Registry specs become Ray Serve deployment options a user can rely on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serve_app.deployments.builder import deployment_options, plan_models
from serve_app.engines.selection import Platform
from serve_app.registry.models import ModelSpec


def spec(**fields) -> ModelSpec:
    return ModelSpec(name="qwen/2.5", checkpoint=Path("/x"), **fields)


def test_gpu_model_takes_tensor_parallel_gpus_and_llm_queue_limits():
    options = deployment_options(spec(tensor_parallel_size=2), "vllm")
    assert options["name"] == "ModelServer"  # one deployment per model application
    assert options["graceful_shutdown_timeout_s"] == 30  # drain_timeout_s
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 2.0}
    assert options["max_ongoing_requests"] == 1024
    assert options["max_queued_requests"] == 1024
    assert options["autoscaling_config"]["target_ongoing_requests"] == 64


def test_fractional_gpu_and_accelerator_type_pass_through():
    options = deployment_options(spec(resources={"num_gpus": 0.45, "accelerator_type": "H100"}), "vllm")
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.45, "accelerator_type": "H100"}


def test_cpu_engine_claims_no_gpu_and_half_a_core():
    assert deployment_options(spec(), "cpu")["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    # A GPU share in the registry (models.yaml's demo, engine: auto) asks for no GPU on the CPU engine.
    shared = spec(resources={"num_gpus": 0.3})
    assert deployment_options(shared, "cpu")["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}


def test_autoscaling_fields_map_to_serve_names():
    scaling = {"min_replicas": 0, "max_replicas": 4, "initial_replicas": 1, "target_ongoing_requests": 16}
    config = deployment_options(spec(autoscaling=scaling), "vllm")["autoscaling_config"]
    assert config["min_replicas"] == 0 and config["max_replicas"] == 4 and config["initial_replicas"] == 1
    assert config["target_ongoing_requests"] == 16


def test_auto_engine_picks_vllm_only_with_vllm_and_a_gpu():
    specs = [spec(engine="auto"), ModelSpec(name="b", checkpoint=Path("/x"), engine="cpu")]
    assert [p.engine for p in plan_models(specs, Platform(has_vllm=True, gpus=1))] == ["vllm", "cpu"]
    assert [p.engine for p in plan_models(specs, Platform(has_vllm=False, gpus=1))] == ["cpu", "cpu"]
    assert [p.engine for p in plan_models(specs, Platform(has_vllm=True, gpus=0))] == ["cpu", "cpu"]


def test_custom_resources_pass_through_to_ray_actor_options():
    options = deployment_options(spec(resources={"num_cpus": 0.5, "resources": {"node_a": 0.1}}), "cpu")
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0, "resources": {"node_a": 0.1}}


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"GPU": 1}, "'GPU' is a built-in Ray resource; use resources.num_gpus instead"),
        ({"node_a": 0}, "resource 'node_a': amount must be at least 0.0001 (Ray's precision; 0 would pin"),
        ({" node_a": 1}, "resource name ' node_a' must be non-empty, without surrounding spaces"),
    ],
)
def test_custom_resources_are_checked_at_load(resources, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        spec(resources={"resources": resources})
