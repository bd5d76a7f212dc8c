"""API keys: ``Authorization: Bearer <key>`` on the OpenAI and tokenizer routes, when configured.

Off unless models.yaml's ``router.auth`` names a key source: an environment variable
(``api_keys_env``, comma-separated keys, each for every model) or a YAML file (``api_keys_file``:
``keys: [{key: ..., models: [...]}]``, ``models`` optional). Keys are read where the router
replica runs, never from models.yaml itself, and never travel in the app's config.

Which paths need a key: ``/v1/*``, ``/tokenize``, ``/detokenize`` and ``/stats`` (which asks the
models through their queues) always; ``/metrics`` with ``protect_metrics``; ``/readyz`` and
``/health`` with ``protect_readyz``; ``/healthz`` never. A request with several
``Authorization`` headers is 401. The keys file is re-read when it changes (``KeyStore``).
A missing or wrong key is 401 ``invalid_api_key`` in OpenAI's error shape. Keys are compared as
SHA-256 digests with ``hmac.compare_digest`` against every configured key (no early exit), so
the time taken says nothing about how much of a key was right or which key matched.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.errors import AuthenticationError, ModelNotAllowedError, RegistryError
from serve_app.registry.api_keys import KeyEntry, digest, load_keys
from serve_app.registry.models import AuthSpec
from serve_app.router.errors import error_response

logger = logging.getLogger("ray.serve")
ALWAYS_PROTECTED = ("/v1/", "/tokenize", "/detokenize")
MISSING_KEY = "missing API key: send it as 'Authorization: Bearer <key>' (the openai client's api_key)"
WRONG_KEY = "incorrect API key provided"
SEVERAL_KEYS = "several Authorization headers: send exactly one"
RELOAD_CHECK_S = 1.0  # how often the keys file's modification time is looked at

ApiKey = KeyEntry  # one accepted key: its digest and allowed models (registry/api_keys.py)


@dataclass(frozen=True)
class ApiKeys:
    """The router's key check: ``protect_metrics`` / ``protect_readyz`` as configured."""

    keys: tuple[ApiKey, ...]
    protect_metrics: bool = False
    protect_readyz: bool = False

    @classmethod
    def load(cls, spec: AuthSpec, environ: dict[str, str] | None = None) -> ApiKeys | None:
        """The keys ``spec`` names; None when auth is off. Raises RegistryError (fail closed)
        when a named source is missing, empty or malformed: never serve open by accident."""
        keys = load_keys(spec, environ)
        if keys is None:
            return None
        return cls(keys, spec.protect_metrics, spec.protect_readyz)

    def needs_key(self, path: str) -> bool:
        if path.startswith(ALWAYS_PROTECTED):
            return True
        if path == "/stats":  # asks the models through their queues: never open when keys are on
            return True
        if path == "/metrics":
            return self.protect_metrics
        if path in ("/readyz", "/health"):
            return self.protect_readyz
        return False

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key an ``Authorization`` header carries; AuthenticationError when none matches."""
        if not authorization:
            raise AuthenticationError(MISSING_KEY)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(MISSING_KEY)
        given = digest(token.strip())
        found: ApiKey | None = None
        for key in self.keys:  # every key compared, whatever matched
            if hmac.compare_digest(given, key.digest) and found is None:
                found = key
        if found is None:
            raise AuthenticationError(WRONG_KEY)
        return found


class KeyStore:
    """A router replica's keys, re-read when the keys file changes.

    ``serve deploy`` of an unchanged models.yaml does not restart the router (its args did not
    change), so a key removed from ``api_keys_file`` must take effect without one: the file's
    modification time is checked at most every RELOAD_CHECK_S, and a changed file is read
    again. A file that became invalid or unreadable fails closed: no key is accepted (every
    protected request 401) until it is fixed, and the error is logged. Keys from
    ``api_keys_env`` are read once: the environment of a running cluster does not change."""

    def __init__(self, spec: AuthSpec) -> None:
        self.spec = spec
        self.keys = ApiKeys.load(spec)
        self._path: Path | None = spec.api_keys_file
        self._stamp = self._mtime()
        self._checked = time.monotonic()

    def _mtime(self) -> float | None:
        try:
            return self._path.stat().st_mtime if self._path is not None else None
        except OSError:
            return None

    def current(self) -> ApiKeys | None:
        if self._path is None or time.monotonic() - self._checked < RELOAD_CHECK_S:
            return self.keys
        self._checked = time.monotonic()
        stamp = self._mtime()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.keys = ApiKeys.load(self.spec)
                logger.info("API keys re-read from %s: %d key(s)", self._path, len(self.keys.keys))
            except RegistryError as error:
                logger.error("API keys not re-read, every key refused until fixed: %s", error)
                self.keys = ApiKeys((), self.spec.protect_metrics, self.spec.protect_readyz)
        return self.keys


def check_model_allowed(key: ApiKey | None, model: str, ids: Iterable[str] = ()) -> None:
    """ModelNotAllowedError (403) unless ``key`` may use ``model``: its list names the id the
    request sent or another id of the same model (``ids``: its name and aliases)."""
    if key is None or key.models is None:
        return
    if model in key.models or any(i in key.models for i in ids):
        return
    raise ModelNotAllowedError(f"this API key may not use model {model[:200]!r}", param="model")


class ApiKeyAuth:
    """ASGI middleware: 401 before the app runs when a protected path lacks a valid key.

    ``keys`` is a callable returning the replica's ``ApiKeys`` (None: auth off), because the
    router's config arrives after the app is built. The matched key goes into
    ``scope["state"]["api_key"]`` for the routes' model allow-list check."""

    def __init__(self, app: Any, keys: Callable[[], ApiKeys | None]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        keys = self.keys() if scope["type"] == "http" else None
        if keys is not None and keys.needs_key(route_path(scope)):
            # Several Authorization headers: a proxy in front may have checked another one.
            given = [value for name, value in scope.get("headers") or () if name.lower() == b"authorization"]
            try:
                if len(given) > 1:
                    raise AuthenticationError(SEVERAL_KEYS)
                authorization = given[0].decode("latin-1") if given else ""
                scope.setdefault("state", {})["api_key"] = keys.authenticate(authorization)
            except AuthenticationError as error:
                response = error_response(error)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def route_path(scope: dict) -> str:
    """The request's path below the app's route prefix (Serve's ``root_path``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path
