"""A real Ray Serve cluster for the tests, and apps started from a models.yaml in a temp folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from serve_app.registry.layout import MODEL_IMPORT_PATH, serve_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_models_yaml(
    folder: Path,
    models: list[dict[str, Any]],
    name: str = "llm",
    prefix: str = "/",
    port: int = 8000,
    **router: Any,
) -> Path:
    """A models.yaml in ``folder``: a router application ``name`` at route ``prefix`` and one
    application per model named ``<name>-<model>``; the router serves only those
    (``model_app_prefix``), so several test fleets share one cluster. ``models`` are registry
    dicts; their live fields go to each application's ``deployments:`` entry."""
    document = serve_config(
        models, {"model_app_prefix": f"{name}-", **router}, port=port, route_prefix=prefix
    )
    document["applications"][0]["name"] = name
    for app in document["applications"][1:]:
        app["name"] = f"{name}-{app['args']['name']}"
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# Every application the tests deployed on the session's cluster, by name. A declarative deploy
# replaces the cluster's whole set of applications, so each deploy sends all of them; those whose
# config did not change keep their replicas (what issue 12 is about).
_DEPLOYED: dict[str, dict[str, Any]] = {}


def deploy_applications(apps: list[dict[str, Any]], remove: list[str] = ()) -> None:
    """Deploy ``apps`` beside the ones already deployed (minus ``remove``), the way `serve run
    models.yaml` and `serve deploy models.yaml` do: one declarative config to the controller."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    for name in remove:
        _DEPLOYED.pop(name, None)
    for app in apps:
        _DEPLOYED[app["name"]] = app
    config = ServeDeploySchema.model_validate({"applications": list(_DEPLOYED.values())})
    _get_global_client().deploy_apps(config, _blocking=False)


def fleet_applications(path: Path) -> list[dict[str, Any]]:
    """The applications of a models.yaml, each model's relative checkpoints resolved against
    the YAML's folder (``serve run`` resolves them against the folder the cluster started in)."""
    document = yaml.safe_load(path.read_text())
    apps = document["applications"]
    for app in apps:
        if app["import_path"] == MODEL_IMPORT_PATH:
            app["args"].setdefault("base_dir", str(path.parent))
    return apps


def start_app_from_yaml(path: Path) -> str:
    """Deploy the fleet a models.yaml describes on the test cluster; returns the router's route."""
    apps = fleet_applications(path)
    deploy_applications(apps)
    return apps[0]["route_prefix"]


def wait_deployed(timeout_s: float = 240) -> None:
    """Wait until every application is RUNNING; raise naming those that failed (as `serve.run`
    does for an application deployed from Python)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps = serve.status().applications
        failed = {name: app.message for name, app in apps.items() if app.status == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError(f"Deploying applications {sorted(failed)} failed: {failed}")
        if apps and all(app.status == "RUNNING" for app in apps.values()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"applications not RUNNING after {timeout_s} s")


def wait_ready(base_url: str, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=10)
            last = response.text
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} not ready after {timeout_s} s: {last}")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_server(command: list[str], cwd: Path, env_update: dict[str, str]) -> subprocess.Popen:
    """``command`` (``serve run`` or ``python -m serve_app run``) as a terminal would start it: in
    a session of its own (so a test can signal its whole group), SIGINT at its default action (a
    background job without job control would ignore it), output piped (text), and a cluster of its
    own: no RAY_ADDRESS (Ray 2.60 rejects an empty one), PYTHONPATH at the repository."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env.update(env_update)
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        start_new_session=True,
        preexec_fn=_default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
