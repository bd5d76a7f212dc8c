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
from serve_app.registry.loader import config_path_from_argv, parse_registry
from serve_app.registry.models import RegistrySpec
from serve_app.router.app import Router

logger = logging.getLogger("ray.serve")


def build_app(args: dict[str, Any]) -> Application:
    """Validate the registry, run preflight, and build the deployments and the router."""
    if not isinstance(args, dict):
        raise RegistryError("build_app args must be a mapping with 'models:'")
    config_path = config_path_from_argv()
    source = str(config_path) if config_path else "build_app args"
    registry = parse_registry(args, source=source, base_dir=config_path.parent if config_path else None)
    warn_if_slow_ingress(os.environ)
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
    return router.bind(models, aliases, unavailable)


# Set where the Ray cluster starts (`ray start`, or `serve run` starting a local one); the
# cluster's processes, this one included, inherit them.
FAST_INGRESS_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def warn_if_slow_ingress(environ: Mapping[str, str]) -> None:
    """Log a warning when requests will go through Ray Serve's HTTP proxy actor."""
    missing = [name for name, value in FAST_INGRESS_ENV.items() if environ.get(name) != value]
    if not missing:
        return
    logger.warning(
        "%s not set to 1 where the Ray cluster started: requests go through Ray Serve's HTTP "
        "proxy actor, which reached 0.69x of bare vLLM's throughput at concurrency 128 where the "
        "HAProxy ingress reached 1.01x (docs/benchmarks.md). Start the cluster with %s (what "
        "`make serve` does).",
        " and ".join(missing),
        " ".join(f"{name}=1" for name in FAST_INGRESS_ENV),
    )


def run_preflight_gate(registry: RegistrySpec) -> Report:
    """Run preflight; stop on failures of 'fail' models, log the skipped ones."""
    from serve_app.preflight.runner import run_preflight

    report = run_preflight(registry, cluster_gpus=cluster_gpus())
    report.raise_for_failures()
    for name, reason in report.unavailable().items():
        logger.warning("model %s left out (on_preflight_failure: skip): %s", name, reason)
    return report


def _reasons(unavailable: dict[str, str]) -> str:
    return "\n".join(f"  {name}: {reason}" for name, reason in unavailable.items())
