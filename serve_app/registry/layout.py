"""How models.yaml lays the fleet out as Ray Serve applications (docs/architecture.md).

One application per model plus one router application, all in the one Serve config file:

    applications:
      - name: router                       # the HTTP entry point
        route_prefix: /
        import_path: serve_app.app:build_router
        args: {router: {...}}              # RouterSpec
      - name: qwen2-demo                   # one per model; the name is free, args.name is the id
        route_prefix: null                 # reached through the router only
        import_path: serve_app.app:build_model
        args: {name: qwen2-demo, checkpoint: ..., ...}   # ModelSpec: changing it restarts THIS model
        deployments:                       # live options: applied without restarting anything
          - name: ModelServer
            autoscaling_config: {...}
            max_ongoing_requests: 1024

Why: Ray 2.60 versions every deployment of an application with a hash of the application's
``args`` (serve/_private/deploy_utils.py ``get_app_code_version``), and a new version restarts
every replica (``DeploymentVersion.requires_actor_restart``). Options under ``deployments:`` are
applied on top of the built application without a new code version
(application_state.py ``override_deployment_info``).

Nothing here imports Ray: this is data about the file.
"""

from __future__ import annotations

from typing import Any

MODEL_IMPORT_PATH = "serve_app.app:build_model"
ROUTER_IMPORT_PATH = "serve_app.app:build_router"
LEGACY_IMPORT_PATH = "serve_app.app:build_app"  # the one-application layout before issue 12
MODEL_DEPLOYMENT = "ModelServer"  # the deployment inside every model application
ROUTER_DEPLOYMENT = "Router"
ROUTER_APP = "router"

# Registry fields that are Ray Serve deployment options changeable without a restart: they live in
# the model application's `deployments:` entry under Serve's own names, not in its `args`.
LIVE_FIELDS = {
    "autoscaling": "autoscaling_config",
    "max_ongoing_requests": "max_ongoing_requests",
    "max_queued_requests": "max_queued_requests",
}
# Serve options a model application's `deployments:` entry may set. Others (ray_actor_options,
# graceful_shutdown_timeout_s, ...) are derived from the registry by the builder.
LIVE_OPTIONS = frozenset({"name", "num_replicas", *LIVE_FIELDS.values()})


def model_application(
    model: dict[str, Any], *, app_name: str | None = None, base_dir: str | None = None
) -> dict[str, Any]:
    """One model's application entry from a registry model dict (the fields of ``ModelSpec``).

    The live fields (``LIVE_FIELDS``) move to the ``deployments:`` entry under Serve's names; an
    ``autoscaling`` mapping is written out in full, with the registry's defaults filled in,
    because Serve replaces the builder's whole ``autoscaling_config`` with it."""
    from serve_app.registry.models import AutoscalingSpec

    args = {key: value for key, value in model.items() if key not in LIVE_FIELDS}
    if base_dir is not None:
        args.setdefault("base_dir", base_dir)
    overrides: dict[str, Any] = {"name": MODEL_DEPLOYMENT}
    for field, option in LIVE_FIELDS.items():
        if field in model:
            value = model[field]
            if field == "autoscaling":
                value = {**AutoscalingSpec().model_dump(exclude_none=True), **value}
            overrides[option] = value
    entry: dict[str, Any] = {
        "name": app_name or model["name"],
        "route_prefix": None,
        "import_path": MODEL_IMPORT_PATH,
        "args": args,
    }
    if len(overrides) > 1:
        entry["deployments"] = [overrides]
    return entry


def serve_config(
    models: list[dict[str, Any]],
    router: dict[str, Any] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    base_dir: str | None = None,
    route_prefix: str = "/",
) -> dict[str, Any]:
    """A whole Serve config document (what models.yaml holds) for a list of registry models."""
    router_args = {"router": router} if router else {}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": ROUTER_APP,
                "route_prefix": route_prefix,
                "import_path": ROUTER_IMPORT_PATH,
                "args": router_args,
            },
            *(model_application(model, base_dir=base_dir) for model in models),
        ],
    }
