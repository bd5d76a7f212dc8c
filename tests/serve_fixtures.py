"""A real Ray Serve cluster for the tests, and apps started from a models.yaml in a temp folder."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import httpx
import yaml


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
    **args: Any,
) -> Path:
    document = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": name,
                "route_prefix": prefix,
                "import_path": "serve_app.app:build_app",
                "args": {"models": models, **args},
            }
        ],
    }
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def start_app_from_yaml(path: Path) -> str:
    """serve.run the application a models.yaml describes, the way `serve run` builds it."""
    from ray import serve

    from serve_app.app import build_app
    from serve_app.registry.loader import registry_args

    document = yaml.safe_load(path.read_text())
    app_config = document["applications"][0]
    args = dict(registry_args(document, path))
    args.setdefault("base_dir", str(path.parent))
    serve.run(
        build_app(args), name=app_config["name"], route_prefix=app_config["route_prefix"], blocking=False
    )
    return app_config["route_prefix"]


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
