"""Registry specs -> Ray Serve deployment options and bound model-server applications."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.deployments.media import image_policy
from serve_app.deployments.model_server import ModelServer
from serve_app.deployments.node_check import record_manifest
from serve_app.deployments.prompts import TemplatePolicy
from serve_app.engines.selection import (
    Platform,
    ResolvedEngine,
    cpus_per_replica,
    engine_class,
    engine_config,
    gpus_per_replica,
    resolve_engine,
)
from serve_app.registry.layout import MODEL_DEPLOYMENT
from serve_app.registry.models import ModelSpec


@dataclass(frozen=True)
class PlannedModel:
    spec: ModelSpec
    engine: ResolvedEngine
    deployment_name: str
    options: dict[str, Any]


# How often a draining replica counts its requests in flight (Serve's default: 2 s). Short, so a
# replica that finished its streams leaves at once instead of up to 2 s later.
DRAIN_POLL_S = 0.5


def deployment_options(spec: ModelSpec, engine: ResolvedEngine) -> dict[str, Any]:
    num_gpus = gpus_per_replica(spec, engine)
    num_cpus = cpus_per_replica(spec, engine)
    actor_options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    if spec.resources.accelerator_type:
        actor_options["accelerator_type"] = spec.resources.accelerator_type
    if spec.resources.resources:
        actor_options["resources"] = dict(spec.resources.resources)
    scaling = spec.autoscaling
    autoscaling_config: dict[str, Any] = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
    }
    if scaling.initial_replicas is not None:
        autoscaling_config["initial_replicas"] = scaling.initial_replicas
    return {
        # One deployment per model application (registry/layout.py), so one fixed name: the router
        # finds it as (MODEL_DEPLOYMENT, application name).
        "name": MODEL_DEPLOYMENT,
        "ray_actor_options": actor_options,
        "autoscaling_config": autoscaling_config,
        "max_ongoing_requests": spec.max_ongoing_requests,
        "max_queued_requests": spec.max_queued_requests,
        # Serve checks a replica only once its constructor returned, so a vLLM start of minutes is
        # not cut short; after that a dead or hung engine leaves routing within about 3 periods
        # (three failures in a row; docs/operations.md, "Health").
        "health_check_period_s": spec.health_check_period_s,
        "health_check_timeout_s": spec.health_check_timeout_s,
        # Drain (docs/architecture.md): a stopping replica takes no new requests and waits for
        # those in flight up to drain_timeout_s; then Serve kills it and the router ends the
        # streams still open with an error event and [DONE].
        "graceful_shutdown_timeout_s": spec.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": DRAIN_POLL_S,
    }


def plan_models(specs: list[ModelSpec], platform: Platform) -> list[PlannedModel]:
    """Engine and deployment options per model; ``platform`` is what preflight probed."""
    planned = []
    for spec in specs:
        engine = resolve_engine(spec, platform)
        options = deployment_options(spec, engine)
        planned.append(PlannedModel(spec, engine, options["name"], options))
    return planned


def bind_model(planned: PlannedModel) -> Application:
    deployment = serve.deployment(ModelServer).options(**planned.options)
    interval_s = planned.spec.stream_interval_ms / 1000
    policy = TemplatePolicy(
        allow_request_chat_template=planned.spec.allow_request_chat_template,
        chat_template_timeout_s=planned.spec.chat_template_timeout_s,
    )
    # What preflight saw of the checkpoint here; each replica compares its own node's copy.
    manifest = record_manifest(planned.spec.checkpoint)
    return deployment.bind(
        engine_class(planned.engine),
        engine_config(planned.spec),
        interval_s,
        policy,
        planned.spec.tool_call_parser,
        manifest,
        image_policy(planned.spec.media),
        stream_items_per_s=planned.spec.stream_items_per_s,
        health_check_timeout_s=planned.spec.health_check_timeout_s,
    )
