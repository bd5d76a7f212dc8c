"""How the router finds the models: every model is its own Serve application (registry/layout.py).

The router holds no list of models. It reads the applications Serve has deployed, once a second
and at once when a request names a model it does not know:

    Serve controller: applications ──► read_fleet() ──► {app name: ModelApp}
      import_path serve_app.app:build_model             name, aliases (from the app's args),
      deployed args, status, replicas                   status, RUNNING replicas
                                                               │
    request "model": "qwen" ──► Fleet.lookup("qwen") ──► ModelApp ──► Fleet.served(app)
                                                        ServedModel: handles to (ModelServer, app)

Reading the controller costs no model anything: a model scaled to zero stays at zero, and a
model whose replica is busy is not asked. Handles come from ``serve.get_deployment_handle(
"ModelServer", app_name)``; the one call outside Ray Serve's public API is the controller read
(``fetch_details``), the same one ``serve.status()`` makes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serve_app.registry.layout import MODEL_DEPLOYMENT, MODEL_IMPORT_PATH
from serve_app.registry.models import ModelSpec

logger = logging.getLogger("ray.serve")

REFRESH_S = 1.0  # how stale the router's view of the fleet may get
UNKNOWN_REFRESH_S = 0.5  # at most this often, an unknown model name triggers a read at once
DEFAULT_COLD_START_S = ModelSpec.model_fields["cold_start_timeout_s"].default
# Our errors, as a failed build task's traceback names them (the message a client may read).
_OUR_ERROR = re.compile(r"serve_app\.errors\.(\w+): (.*)", re.DOTALL)
FAILED_STATUSES = frozenset({"DEPLOY_FAILED"})


@dataclass(frozen=True)
class ModelApp:
    """One model application as the controller last reported it."""

    app: str  # Serve application name
    name: str  # the model id clients send
    aliases: tuple[str, ...]
    status: str  # Serve's ApplicationStatus: DEPLOYING, RUNNING, DEPLOY_FAILED, UNHEALTHY, DELETING
    running_replicas: int  # replicas in state RUNNING (0: scaled to zero, starting, or failed)
    target_replicas: int | None  # replicas Serve aims for now
    cold_start_timeout_s: float
    max_model_len: int | None  # from the registry entry, when it sets one
    reason: str | None = None  # why it cannot serve (a failed deploy), in our words

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def available(self) -> bool:
        return self.status not in FAILED_STATUSES


@dataclass(frozen=True)
class ServedModel:
    name: str
    handle: Any  # DeploymentHandle to the model's ModelServer
    stream_handle: Any  # the same, with stream=True


def _value(item: Any) -> str:
    return str(getattr(item, "value", item))


def read_fleet(details: Mapping[str, Any], prefix: str = "") -> dict[str, ModelApp]:
    """The model applications in a ``ServeInstanceDetails`` dict whose names start with
    ``prefix`` (RouterSpec.model_app_prefix), by application name.

    Applications deployed from a config (``serve run``/``serve deploy`` of models.yaml) carry
    their import path and ``args`` (the model's name and aliases). One deployed with
    ``serve.run`` from Python has no config: it is a model application when it has a
    ``ModelServer`` deployment, served under its application name, without aliases (how
    scripts/bench_router_overhead.py deploys a fake engine)."""
    fleet: dict[str, ModelApp] = {}
    for app, info in (details.get("applications") or {}).items():
        config = info.get("deployed_app_config") or {}
        deployment = (info.get("deployments") or {}).get(MODEL_DEPLOYMENT) or {}
        imperative = not config and bool(deployment)
        if not app.startswith(prefix) or not (imperative or config.get("import_path") == MODEL_IMPORT_PATH):
            continue
        args = config.get("args") or {}
        replicas = deployment.get("replicas") or []
        status = _value(info.get("status", "NOT_STARTED"))
        max_len = args.get("max_model_len")
        fleet[app] = ModelApp(
            app=app,
            name=str(args.get("name") or app),
            aliases=tuple(str(a) for a in args.get("aliases") or ()),
            status=status,
            running_replicas=sum(1 for r in replicas if _value(r.get("state")) == "RUNNING"),
            target_replicas=deployment.get("target_num_replicas"),
            cold_start_timeout_s=float(args.get("cold_start_timeout_s") or DEFAULT_COLD_START_S),
            max_model_len=max_len if isinstance(max_len, int) else None,
            reason=failure_reason(str(info.get("message") or "")) if status in FAILED_STATUSES else None,
        )
    return fleet


def failure_reason(message: str) -> str:
    """Our own error's text out of a failed deploy's message (a Ray traceback), else a pointer."""
    found = _OUR_ERROR.findall(message)
    if found:
        return found[-1][1].strip()[:2000]
    return "its application failed to deploy; `serve status` shows why"


async def fetch_details() -> dict[str, Any]:
    """The controller's ``ServeInstanceDetails`` (what ``serve.status()`` reads), off the loop."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    return await asyncio.to_thread(client.get_serve_details)


class Fleet:
    """The router's view of the model applications, and one pair of handles per application."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.apps: dict[str, ModelApp] = {}
        self.routes: dict[str, ModelApp] = {}  # model id (name or alias) -> its application
        self._served: dict[str, ServedModel] = {}
        self._task: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self._last_read = 0.0
        self._read_once = False
        self._warned: set[tuple[str, str, str]] = set()

    # --- reading the controller ----------------------------------------------------------------
    def update(self, apps: dict[str, ModelApp]) -> None:
        """Take a new view; drop handles of applications that are gone. When two applications
        claim one id, the one that held it already keeps it (a newly deployed application never
        takes traffic from a serving one), else the first by application name; a warning says
        so, once per conflict."""
        routes: dict[str, ModelApp] = {}
        held = {model_id: app.app for model_id, app in self.routes.items()}

        def priority(app: ModelApp) -> tuple[int, str]:
            return (0 if any(held.get(i) == app.app for i in app.ids) else 1, app.app)

        for app in sorted(apps.values(), key=priority):
            for model_id in app.ids:
                if model_id in routes and routes[model_id].app != app.app:
                    conflict = (model_id, routes[model_id].app, app.app)
                    if conflict not in self._warned:
                        self._warned.add(conflict)
                        logger.warning(
                            "model id %r is claimed by applications %r and %r; %r keeps it",
                            *conflict,
                            conflict[1],
                        )
                    continue
                routes[model_id] = app
        for gone in set(self._served) - set(apps):
            del self._served[gone]
        self.apps, self.routes = apps, routes

    async def refresh(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            started = time.monotonic()
            self.update(read_fleet(await fetch_details(), self.prefix))
            self._last_read, self._read_once = started, True

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the controller restarting: keep the last view
                logger.warning("could not read the deployed applications: %s", exc)
            await asyncio.sleep(REFRESH_S)

    async def ensure_started(self) -> None:
        """Start the background reads (first call on the replica's loop), reading once now."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if not self._read_once:
            await self.refresh()

    # --- lookups ---------------------------------------------------------------------------------
    async def lookup(self, model_id: str) -> ModelApp | None:
        """The application serving ``model_id``; an unknown id reads the controller again first
        (at most every UNKNOWN_REFRESH_S), so a model deployed a moment ago is found."""
        await self.ensure_started()
        found = self.routes.get(model_id)
        if found is None and time.monotonic() - self._last_read > UNKNOWN_REFRESH_S:
            await self.refresh()
            found = self.routes.get(model_id)
        return found

    def running(self, app: str) -> int:
        """RUNNING replicas of an application as last read (0 when it is gone)."""
        current = self.apps.get(app)
        return current.running_replicas if current is not None else 0

    async def served(self, app: ModelApp) -> ServedModel:
        """Handles to the application's ModelServer, made once per application."""
        served = self._served.get(app.app)
        if served is None:
            from ray import serve

            handle = await asyncio.to_thread(serve.get_deployment_handle, MODEL_DEPLOYMENT, app.app)
            served = self._served[app.app] = ServedModel(app.name, handle, handle.options(stream=True))
        return served
