"""API keys: ``Authorization: Bearer <key>`` on the OpenAI and tokenizer routes, when configured.

Off unless models.yaml's ``router.auth`` names a key source: an environment variable
(``api_keys_env``, comma-separated keys, each for every model) or a YAML file (``api_keys_file``:
``keys: [{key: ..., models: [...]}]``, ``models`` optional). Keys are read where the router
replica runs, never from models.yaml itself, and never travel in the app's config.

Which paths need a key: ``/v1/*``, ``/tokenize``, ``/detokenize`` always; ``/metrics`` with
``protect_metrics`` (and ``/stats``); ``/readyz`` and ``/health`` with ``protect_readyz``; ``/healthz`` never.
A missing or wrong key is 401 ``invalid_api_key`` in OpenAI's error shape. Keys are compared as
SHA-256 digests with ``hmac.compare_digest`` against every configured key (no early exit), so
the time taken says nothing about how much of a key was right or which key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.errors import AuthenticationError, ModelNotAllowedError, RegistryError
from serve_app.registry.models import AuthSpec
from serve_app.router.errors import error_response

ALWAYS_PROTECTED = ("/v1/", "/tokenize", "/detokenize")
MISSING_KEY = "missing API key: send it as 'Authorization: Bearer <key>' (the openai client's api_key)"
WRONG_KEY = "incorrect API key provided"


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=8)
    models: list[str] | None = None


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[_KeyEntry] = Field(min_length=1)


@dataclass(frozen=True)
class ApiKey:
    """One accepted key, stored only as its SHA-256 digest, with its allowed models (None: all)."""

    digest: bytes
    models: frozenset[str] | None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


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
        if not spec.enabled:
            return None
        environ = dict(os.environ) if environ is None else environ
        keys: list[ApiKey] = []
        if spec.api_keys_env is not None:
            raw = environ.get(spec.api_keys_env, "")
            env_keys = [key.strip() for key in raw.split(",") if key.strip()]
            if not env_keys:
                raise RegistryError(
                    f"router.auth.api_keys_env names {spec.api_keys_env}, which is unset or empty where "
                    "the router runs; set it where the Ray cluster starts (e.g. "
                    f"`{spec.api_keys_env}=... make serve`) or remove router.auth"
                )
            keys += [ApiKey(_digest(key), None) for key in env_keys]
        if spec.api_keys_file is not None:
            keys += _read_keys_file(spec.api_keys_file)
        return cls(tuple(keys), spec.protect_metrics, spec.protect_readyz)

    def needs_key(self, path: str) -> bool:
        if path.startswith(ALWAYS_PROTECTED):
            return True
        if path in ("/metrics", "/stats"):
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
        given = _digest(token.strip())
        found: ApiKey | None = None
        for key in self.keys:  # every key compared, whatever matched
            if hmac.compare_digest(given, key.digest) and found is None:
                found = key
        if found is None:
            raise AuthenticationError(WRONG_KEY)
        return found


def check_model_allowed(key: ApiKey | None, model: str) -> None:
    """ModelNotAllowedError (403) unless ``key`` may use ``model`` (a name or alias)."""
    if key is not None and key.models is not None and model not in key.models:
        raise ModelNotAllowedError(f"this API key may not use model {model[:200]!r}", param="model")


def _read_keys_file(path: Path) -> list[ApiKey]:
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"router.auth.api_keys_file {path}: no such file where the router runs") from None
    except (OSError, yaml.YAMLError) as error:
        raise RegistryError(f"router.auth.api_keys_file {path}: unreadable: {error}") from None
    try:
        parsed = _KeysFile.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors(include_input=False)
        )
        raise RegistryError(f"router.auth.api_keys_file {path}: {problems}") from None
    return [
        ApiKey(_digest(entry.key), None if entry.models is None else frozenset(entry.models))
        for entry in parsed.keys
    ]


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
            headers = dict(scope.get("headers") or ())
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            try:
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
