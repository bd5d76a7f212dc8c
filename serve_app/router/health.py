"""Readiness from the Serve controller's view of the replicas, never through a model's queue.

``/readyz`` used to ask each model through its request queue (``handle.info``): under overload
that call waited behind the queue and timed out (503 for the whole endpoint), it started a model
scaled to zero, and with several replicas it described one random replica. Here a model is ready
when the controller counts at least one of its replicas RUNNING; RUNNING replicas are the ones
Serve routes to, and a replica leaves RUNNING when it fails its health checks (model_server.py
``check_health``). Nothing is sent to a replica.

The controller is asked through ``replica_states()`` (``serve.status()``: one actor call to the
controller, run in a thread), at most once per CACHE_S however many probes arrive: one call in
flight serves every probe that comes meanwhile. ``replica_states`` is the one function to adapt
if the app's layout changes (e.g. one Serve application per model): it maps
``(application, deployment)`` to what the controller says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CACHE_S = 1.0


@dataclass(frozen=True)
class DeploymentView:
    """What the controller says about one deployment: its status, message and replica counts."""

    status: str
    message: str
    replicas: dict[str, int]


@dataclass(frozen=True)
class ModelTarget:
    """Where a served model runs: its Serve application and deployment, and whether it may be
    scaled to zero (``autoscaling.min_replicas: 0``)."""

    name: str
    deployment: str
    app: str | None = None  # None: the router's own application
    scales_to_zero: bool = False


def replica_states() -> dict[tuple[str, str], DeploymentView]:
    """Every deployment of every application, as the Serve controller sees it now (blocking)."""
    from ray import serve

    views = {}
    for app_name, app in serve.status().applications.items():
        for name, deployment in app.deployments.items():
            replicas = {
                str(getattr(state, "value", state)): count
                for state, count in deployment.replica_states.items()
            }
            status = str(getattr(deployment.status, "value", deployment.status))
            views[(app_name, name)] = DeploymentView(status, deployment.message or "", replicas)
    return views


class Readiness:
    """Per-model readiness for ``/readyz`` and ``/health`` from ``states`` (cached, single-flight)."""

    def __init__(
        self,
        targets: list[ModelTarget],
        own_app: str,
        states: Callable[[], dict[tuple[str, str], DeploymentView]] = replica_states,
    ) -> None:
        self.targets = {t.name: t for t in targets}
        self.own_app = own_app
        self._states = states
        self._cached: dict[tuple[str, str], DeploymentView] = {}
        self._cached_at = -CACHE_S
        self._lock = asyncio.Lock()

    async def views(self) -> dict[tuple[str, str], DeploymentView]:
        async with self._lock:  # probes that arrive while one call is out wait for its answer
            if time.monotonic() - self._cached_at >= CACHE_S:
                self._cached = await asyncio.to_thread(self._states)
                self._cached_at = time.monotonic()
            return self._cached

    async def model(self, name: str) -> dict[str, Any]:
        """``{"ready", "reason", "replicas", "status"}`` for one served model (its name).

        ``ready``: at least one RUNNING replica. A model scaled to zero on purpose is not ready,
        with ``scaled_to_zero: true`` (the next request starts a replica)."""
        target = self.targets[name]
        view = (await self.views()).get((target.app or self.own_app, target.deployment))
        if view is None:
            return {"ready": False, "reason": "the Serve controller does not know this model's deployment"}
        running = view.replicas.get("RUNNING", 0)
        body: dict[str, Any] = {"ready": running > 0, "status": view.status, "replicas": view.replicas}
        if running:
            return body
        if (
            target.scales_to_zero
            and view.status in ("HEALTHY", "DOWNSCALING")
            and not any(view.replicas.values())
        ):
            body.update(
                scaled_to_zero=True, reason="scaled to zero (min_replicas: 0); a request starts a replica"
            )
        else:
            detail = f": {view.message}" if view.message else ""
            counts = ", ".join(f"{count} {state}" for state, count in sorted(view.replicas.items())) or "none"
            body["reason"] = f"no replica is RUNNING (replicas: {counts}; deployment {view.status}){detail}"[
                :1000
            ]
        return body

    async def all(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """(every model that should be up has a RUNNING replica, per-model bodies).

        A model scaled to zero on purpose does not make the whole endpoint unready: it serves
        (after a cold start) as configured."""
        models = {name: await self.model(name) for name in self.targets}
        ready = all(body["ready"] or body.get("scaled_to_zero", False) for body in models.values())
        return ready, models


@dataclass(frozen=True)
class RouterOps:
    """What the router needs for operations: where each model runs (readiness) and API keys."""

    targets: tuple[ModelTarget, ...] = ()
    auth: Any = None  # registry AuthSpec; None: keys off
