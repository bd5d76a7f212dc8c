"""``build_app``: the import path models.yaml names (``serve_app.app:build_app``).

registry -> preflight -> one deployment per model -> the router that routes by ``model``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.deployments.builder import PlannedModel, bind_model, plan_models
from serve_app.engines.selection import cluster_gpus
from serve_app.errors import PreflightFailed, RegistryError
from serve_app.preflight.report import Report
from serve_app.registry.loader import parse_registry
from serve_app.registry.models import RegistrySpec
from serve_app.router.app import Router
from serve_app.router.auth import ApiKeys
from serve_app.router.health import ModelTarget, RouterOps
from serve_app.router.limits import RequestLimits

logger = logging.getLogger("ray.serve")


def build_app(args: dict[str, Any]) -> Application:
    """Validate the registry, run preflight, and build the deployments and the router."""
    if not isinstance(args, dict):
        raise RegistryError("build_app args must be a mapping with 'models:'")
    # `serve run models.yaml` builds the app in a Ray task on the cluster (Ray 2.60's
    # serve/scripts.py run -> client.deploy_apps), whose argv does not hold the YAML's path: relative
    # checkpoints resolve against `base_dir`, else the folder the cluster started from.
    registry = parse_registry(args, source="build_app args")
    warn_if_slow_ingress(os.environ)
    warn_if_haproxy_ports_open(os.environ)
    ApiKeys.load(registry.router.auth)  # a named key source that is missing fails here, before deploying
    check_grpc_message_limit(registry, os.environ)
    report = run_preflight_gate(registry)
    unavailable = report.unavailable()
    planned = plan_models(registry.models, report.platform)
    served = [p for p in planned if p.spec.name not in unavailable]
    if not served:
        raise PreflightFailed("no model passed preflight; nothing to serve:\n" + _reasons(unavailable))
    return build_router(registry, served, unavailable)


def build_router(
    registry: RegistrySpec, served: list[PlannedModel], unavailable: dict[str, str]
) -> Application:
    models = {p.spec.name: bind_model(p) for p in served}
    aliases = {alias: p.spec.name for p in served for alias in p.spec.aliases}
    router = serve.deployment(Router).options(
        name="Router",
        num_replicas=registry.router.num_replicas,
        max_ongoing_requests=registry.router.max_ongoing_requests,
        ray_actor_options={"num_cpus": registry.router.num_cpus},
    )
    targets = tuple(
        ModelTarget(p.spec.name, p.deployment_name, scales_to_zero=p.spec.autoscaling.min_replicas == 0)
        for p in served
    )
    ops = RouterOps(targets, registry.router.auth)
    return router.bind(models, aliases, unavailable, RequestLimits.from_spec(registry.router), ops)


# In throughput mode a deployment handle sends each request to the model replica as one gRPC
# message, which the replica's server accepts up to RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH bytes
# (ray/serve/_private/constants.py in Ray 2.60: default 4 MiB, "we keep [gRPC's] default"; used by
# replica.py's server and request_router/replica_wrapper.py's channel). A prompt just over 4 MiB
# failed there with 500. 64 MiB leaves room above the router's largest body (48 MiB, see
# RouterSpec.max_request_body_bytes): a pickled request is not larger than its JSON body plus a
# small overhead.
GRPC_MESSAGE_ENV = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"
RAY_DEFAULT_GRPC_MESSAGE_BYTES = 4 * 1024 * 1024
GRPC_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_HEADROOM = 1.25  # the router's body limit times this must fit one gRPC message

# Set where the Ray cluster starts (`ray start`, or `serve run` starting a local one); the
# cluster's processes, this one included, inherit them.
FAST_INGRESS_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    GRPC_MESSAGE_ENV: str(GRPC_MESSAGE_BYTES),
}
INGRESS_SWITCHES = ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")


def check_grpc_message_limit(registry: RegistrySpec, environ: Mapping[str, str]) -> None:
    """Refuse a router body limit that the inter-deployment gRPC hop could not carry.

    Only in throughput mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``), where deployments talk gRPC.
    Raises ``RegistryError`` naming both numbers and the fix."""
    if environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") != "1":
        return
    raw = environ.get(GRPC_MESSAGE_ENV, "")
    grpc_bytes = int(raw) if raw.isdigit() else RAY_DEFAULT_GRPC_MESSAGE_BYTES
    body_bytes = registry.router.max_request_body_bytes
    if body_bytes * GRPC_HEADROOM > grpc_bytes:
        raise RegistryError(
            f"router.max_request_body_bytes is {body_bytes}, but requests travel between deployments "
            f"as gRPC messages of at most {grpc_bytes} bytes ({GRPC_MESSAGE_ENV}); a body that passes "
            f"the router would fail there. Start the cluster with {GRPC_MESSAGE_ENV}={GRPC_MESSAGE_BYTES} "
            f"(what `make serve` does) or lower router.max_request_body_bytes to at most "
            f"{int(grpc_bytes / GRPC_HEADROOM)}."
        )


def warn_if_slow_ingress(environ: Mapping[str, str]) -> None:
    """Log a warning when requests will go through Ray Serve's HTTP proxy actor."""
    missing = [name for name in INGRESS_SWITCHES if environ.get(name) != FAST_INGRESS_ENV[name]]
    if not missing:
        return
    logger.warning(
        "%s not set to 1 where the Ray cluster started: requests go through Ray Serve's HTTP "
        "proxy actor, which reached 0.69x of bare vLLM's throughput at concurrency 128 where the "
        "HAProxy ingress reached 1.01x (docs/benchmarks.md). Start the cluster with %s (what "
        "`make serve` does).",
        " and ".join(missing),
        " ".join(f"{name}={value}" for name, value in FAST_INGRESS_ENV.items()),
    )


def warn_if_haproxy_ports_open(environ: Mapping[str, str]) -> None:
    """Log where HAProxy's stats page and metrics listen when the HAProxy ingress is on.

    Ray 2.60 binds them to every interface (``bind *:<stats_port>`` and ``bind :<metrics_port>``
    in ray/serve/_private/haproxy_templates.py; only the ports can be set), without
    authentication; docs/operations.md says how to close them."""
    if environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        return
    stats = environ.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404")
    metrics = environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101")
    logger.warning(
        "HAProxy ingress: its stats page (port %s) and Prometheus metrics (port %s) listen on all "
        "interfaces without authentication (Ray 2.60 offers no bind address for them); block both "
        'ports from outside this host with a firewall (docs/operations.md, "HAProxy\'s ports")',
        stats,
        metrics,
    )


def run_preflight_gate(registry: RegistrySpec) -> Report:
    """Run preflight; stop on failures of 'fail' models, log the skipped ones."""
    from serve_app.preflight.render import raise_for_failures
    from serve_app.preflight.runner import run_preflight

    report = run_preflight(registry, cluster_gpus=cluster_gpus())
    raise_for_failures(report)
    for name, reason in report.unavailable().items():
        logger.warning("model %s left out (on_preflight_failure: skip): %s", name, reason)
    for result in report.cluster:
        if result.status == "warn":
            logger.warning("preflight %s: %s; %s", result.name, result.detail, result.fix)
    return report


def _reasons(unavailable: dict[str, str]) -> str:
    return "\n".join(f"  {name}: {reason}" for name, reason in unavailable.items())
