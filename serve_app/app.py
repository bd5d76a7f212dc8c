"""The import paths models.yaml names: ``build_router`` and ``build_model`` (one per model).

Each model is its own Serve application (registry/layout.py, docs/architecture.md):
registry (its args) -> preflight (before any GPU is claimed) -> its engine -> its deployment.
The router application holds no model: it finds the model applications by name at run time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.deployments.builder import bind_model, plan_models
from serve_app.engines.selection import cluster_gpus
from serve_app.errors import PreflightFailed, RegistryError
from serve_app.preflight.report import Report
from serve_app.registry.layout import (
    LEGACY_IMPORT_PATH,
    MODEL_IMPORT_PATH,
    ROUTER_DEPLOYMENT,
    ROUTER_IMPORT_PATH,
)
from serve_app.registry.loader import parse_model_args, parse_router_args
from serve_app.registry.models import RegistrySpec, RouterSpec
from serve_app.router.app import Router
from serve_app.router.auth import ApiKeys
from serve_app.router.limits import RequestLimits

logger = logging.getLogger("ray.serve")


def build_model(args: dict[str, Any]) -> Application:
    """One model's application: validate its registry entry, run its preflight, bind its server.

    Runs in Serve's build task on the cluster, before any replica (and so any GPU) exists. A failed
    preflight raises ``PreflightFailed``: this application is DEPLOY_FAILED with the report as its
    message (``serve status``), the other applications are untouched, and the router lists the
    model as unavailable. ``on_preflight_failure: skip`` lets ``python -m serve_app preflight``
    (what ``make serve`` runs first) pass with the model left out."""
    # `serve run models.yaml` builds in a Ray task whose argv does not hold the YAML's path:
    # relative checkpoints resolve against `base_dir`, else the folder the cluster started from.
    spec = parse_model_args(args, source=f"{MODEL_IMPORT_PATH} args")
    registry = RegistrySpec(models=[spec])
    report = run_preflight_gate(registry)
    unavailable = report.unavailable()
    if spec.name in unavailable:
        raise PreflightFailed(unavailable[spec.name])
    (planned,) = plan_models(registry.models, report.platform)
    return bind_model(planned)


def build_router(args: dict[str, Any] | None = None) -> Application:
    """The router application: the OpenAI HTTP surface. Its args hold only ``router:`` settings,
    so adding, removing or changing a model never restarts it."""
    spec = parse_router_args(args or {}, source=f"{ROUTER_IMPORT_PATH} args")
    warn_if_slow_ingress(os.environ)
    warn_if_haproxy_ports_open(os.environ)
    ApiKeys.load(spec.auth)  # a named key source that is missing fails here, before deploying
    check_grpc_message_limit(spec, os.environ)
    return bind_router(spec)


def bind_router(spec: RouterSpec) -> Application:
    router = serve.deployment(Router).options(
        name=ROUTER_DEPLOYMENT,
        num_replicas=spec.num_replicas,
        max_ongoing_requests=spec.max_ongoing_requests,
        ray_actor_options={"num_cpus": spec.num_cpus},
        # The router's own drain: its streams end when the models' do (their drain_timeout_s);
        # this bounds a router replica's stop beyond the longest model drain.
        graceful_shutdown_timeout_s=spec.drain_timeout_s,
        graceful_shutdown_wait_loop_s=0.5,
    )
    return router.bind(RequestLimits.from_spec(spec), spec.model_app_prefix, spec.auth)


def build_app(args: dict[str, Any]) -> Application:
    """The one-application layout of earlier versions, refused with the way to the new one."""
    raise RegistryError(
        f"import_path {LEGACY_IMPORT_PATH} is gone: each model is now its own application "
        f"(import_path: {MODEL_IMPORT_PATH}) beside one router application (import_path: "
        f"{ROUTER_IMPORT_PATH}); see README.md, 'models.yaml reference'"
    )


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
# HAProxy's `timeout client` (Ray's default 3,600 s) is how long a client may stay silent while
# HAProxy waits for its request: headers that never end (slowloris) or a stalled body held one of
# HAProxy's 4,096 connections for an hour. It does not cut a request waiting on a slow answer
# (docs/hardening.md). 70 s: above the router's request_body_timeout_s default (60 s), so a stalled
# body gets the router's 408 in OpenAI's error shape rather than HAProxy's own 400.
HAPROXY_CLIENT_TIMEOUT_ENV = "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"
# In direct-ingress mode Ray keeps every application's ingress replica reachable for this long
# when it stops, "so load balancers can deregister" it (Ray 2.60 replica.py, default 30 s), even
# when idle. Every model application is one (route_prefix null: no load balancer ever sends it
# anything; the router's handles drop a stopping replica at once), so each model update, scale-in
# and Ctrl-C waited 30 s, and `make serve`'s Ctrl-C about a minute. HAProxy takes in a stopping
# router replica by a config reload within about a second; 5 s leaves room for that.
MIN_DRAINING_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
FAST_INGRESS_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    GRPC_MESSAGE_ENV: str(GRPC_MESSAGE_BYTES),
    HAPROXY_CLIENT_TIMEOUT_ENV: "70",
    MIN_DRAINING_ENV: "5",
}
INGRESS_SWITCHES = ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")


def check_grpc_message_limit(router: RouterSpec, environ: Mapping[str, str]) -> None:
    """Refuse a router body limit that the inter-deployment gRPC hop could not carry.

    Only in throughput mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``), where deployments talk gRPC.
    Raises ``RegistryError`` naming both numbers and the fix."""
    if environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") != "1":
        return
    raw = environ.get(GRPC_MESSAGE_ENV, "")
    grpc_bytes = int(raw) if raw.isdigit() else RAY_DEFAULT_GRPC_MESSAGE_BYTES
    body_bytes = router.max_request_body_bytes
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
    """Log ``haproxy_ports_warning`` (in the controller's log, where a builder's lines go;
    ``serve_app run`` prints it on the console too)."""
    warning = haproxy_ports_warning(environ)
    if warning is not None:
        logger.warning("%s", warning)


def haproxy_ports_warning(environ: Mapping[str, str]) -> str | None:
    """Where HAProxy's stats page and metrics listen when the HAProxy ingress is on; None when off.

    Ray 2.60 binds them to every interface (``bind *:<stats_port>`` and ``bind :<metrics_port>``
    in ray/serve/_private/haproxy_templates.py; only the ports can be set), without
    authentication; docs/operations.md says how to close them."""
    if environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        return None
    stats = environ.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404")
    metrics = environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101")
    return (
        f"HAProxy ingress: its stats page (port {stats}) and Prometheus metrics (port {metrics}) listen"
        " on all interfaces without authentication (Ray 2.60 offers no bind address for them); block"
        ' both ports from outside this host with a firewall (docs/operations.md, "HAProxy\'s ports")'
    )


def run_preflight_gate(registry: RegistrySpec) -> Report:
    """Run preflight; stop on failures of 'fail' models, log the skipped ones."""
    from serve_app.preflight.render import raise_for_failures
    from serve_app.preflight.runner import run_preflight

    # The models only: this application deploys no router (it is an application of its own).
    report = run_preflight(registry.models, cluster_gpus=cluster_gpus())
    raise_for_failures(report)
    for name, reason in report.unavailable().items():
        logger.warning("model %s left out (on_preflight_failure: skip): %s", name, reason)
    for result in report.cluster:
        if result.status == "warn":
            logger.warning("preflight %s: %s; %s", result.name, result.detail, result.fix)
    return report
