"""Readiness from the Serve controller's view of the replicas, never through a model's queue.

``/readyz`` used to ask each model through its request queue (``handle.info``): under overload
that call waited behind the queue and timed out (503 for the whole endpoint), it started a model
scaled to zero, and with several replicas it described one random replica. Here a model is ready
when the controller counts at least one of its replicas RUNNING; RUNNING replicas are the ones
Serve routes to, and a replica leaves RUNNING when it fails its health checks (model_server.py
``check_health``). Nothing is sent to a replica.

The controller's view is the router's fleet (router/fleet.py ``Fleet``): one read of the
controller a second, shared by every probe and every request, however many probes arrive.
"""

from __future__ import annotations

from typing import Any

from serve_app.router.fleet import ModelApp


def model_readiness(app: ModelApp) -> dict[str, Any]:
    """``{"ready", "available", "replicas", "application", ...}`` for one model application.

    ``ready``: at least one RUNNING replica. A model that autoscaling took to zero on purpose
    (application RUNNING, 0 replicas targeted) is not ready, with ``scaled_to_zero: true`` and a
    reason: the next request starts a replica (cold_start_timeout_s). A model whose deploy failed
    is ``available: false`` with the reason (its preflight report, in our words)."""
    if not app.available:
        return {"ready": False, "available": False, "application": app.status, "reason": app.reason}
    body: dict[str, Any] = {
        "ready": app.running_replicas > 0,
        "available": True,
        "replicas": app.running_replicas,
        "application": app.status,
    }
    if app.running_replicas > 0:
        return body
    if app.status == "RUNNING" and app.target_replicas == 0:
        reason = "scaled to zero (min_replicas: 0); a request starts a replica"
        body.update(scaled_to_zero=True, reason=reason)
    else:
        target = "unknown" if app.target_replicas is None else app.target_replicas
        body["reason"] = f"no replica is RUNNING (application {app.status}, {target} targeted)"
    return body


def fleet_readiness(apps: list[ModelApp]) -> tuple[bool, dict[str, dict[str, Any]]]:
    """(ready, per-model bodies by model name) for ``/readyz`` and ``/health``.

    Ready when there is at least one model, and every model that should be up has a RUNNING
    replica. A model scaled to zero on purpose does not make the endpoint unready (it serves,
    after a cold start, as configured); a model whose deploy failed does not either (it is
    listed as unavailable, as a model left out by preflight: the others serve), but a fleet
    where no model is available is not ready."""
    models = {app.name: model_readiness(app) for app in apps}
    available = [body for body in models.values() if body["available"]]
    ready = bool(available) and all(body["ready"] or body.get("scaled_to_zero", False) for body in available)
    return ready, models
