"""Reading the API keys models.yaml's ``router.auth`` names (never the YAML itself).

Two sources: an environment variable (``api_keys_env``: comma-separated keys, each for every
model) and a YAML file (``api_keys_file``: ``keys: [{key: ..., models: [...]}]``). Keys are kept
only as SHA-256 digests. Each source that is named must hold valid keys, or loading fails with a
``RegistryError`` naming the source and the fix: a misconfigured router never serves open.

A key is printable ASCII without spaces, at least 8 characters: an HTTP client sends it in a
header, which the router reads as Latin-1 and strips, so any other key could never match.
Used by the router (router/auth.py) and by ``python -m serve_app validate`` / ``preflight``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve_app.errors import RegistryError
from serve_app.registry.models import AuthSpec

MIN_KEY_CHARS = 8
_KEY = re.compile(r"^[\x21-\x7e]+$")
KEY_RULE = f"printable ASCII without spaces, at least {MIN_KEY_CHARS} characters"


@dataclass(frozen=True)
class KeyEntry:
    """One accepted key: its SHA-256 digest and the model ids it may use (None: every model)."""

    digest: bytes
    models: frozenset[str] | None


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _check_key(key: str) -> str:
    if len(key) < MIN_KEY_CHARS or not _KEY.match(key):
        raise ValueError(f"a key must be {KEY_RULE}")
    return key


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str
    models: list[str] | None = Field(default=None, min_length=1)

    @field_validator("key")
    @classmethod
    def key_is_sendable(cls, value: str) -> str:
        return _check_key(value)


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[_Entry] = Field(min_length=1)


def load_keys(spec: AuthSpec, environ: Mapping[str, str] | None = None) -> tuple[KeyEntry, ...] | None:
    """Every key ``spec`` names; None when auth is off. Raises RegistryError for a named source
    that is missing, empty, malformed, or holds an invalid or repeated key."""
    if not spec.enabled:
        return None
    environ = os.environ if environ is None else environ
    keys: list[KeyEntry] = []
    if spec.api_keys_env is not None:
        raw = environ.get(spec.api_keys_env, "")
        env_keys = [key.strip() for key in raw.split(",") if key.strip()]
        if not env_keys:
            raise RegistryError(
                f"router.auth.api_keys_env names {spec.api_keys_env}, which is unset or empty where "
                "the router runs; set it where the Ray cluster starts (e.g. "
                f"`{spec.api_keys_env}=... make serve`) or remove router.auth"
            )
        for index, key in enumerate(env_keys):
            try:
                _check_key(key)
            except ValueError:
                raise RegistryError(
                    f"router.auth.api_keys_env {spec.api_keys_env}: key {index + 1} is not {KEY_RULE}"
                ) from None
        keys += [KeyEntry(digest(key), None) for key in env_keys]
    if spec.api_keys_file is not None:
        keys += read_keys_file(spec.api_keys_file)
    if len({key.digest for key in keys}) != len(keys):
        raise RegistryError(
            "router.auth: the same key is given more than once (in api_keys_env or api_keys_file); "
            "list each key once, with every model it may use"
        )
    return tuple(keys)


def read_keys_file(path: Path) -> list[KeyEntry]:
    """The keys of an ``api_keys_file``; RegistryError naming the file and what is wrong."""
    where = f"router.auth.api_keys_file {path}"
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{where}: no such file where the router runs") from None
    except UnicodeDecodeError:
        raise RegistryError(f"{where}: not UTF-8 text; write it as YAML: keys: [{{key: ...}}]") from None
    except (OSError, yaml.YAMLError) as error:
        raise RegistryError(f"{where}: unreadable: {error}") from None
    if document is None:
        raise RegistryError(f"{where}: the file is empty; write keys: [{{key: ..., models: [...]}}]")
    try:
        parsed = _KeysFile.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'the file'}: {e['msg']}"
            for e in error.errors(include_input=False)
        )
        raise RegistryError(f"{where}: {problems} (expected keys: [{{key: ..., models: [...]}}])") from None
    return [
        KeyEntry(digest(entry.key), None if entry.models is None else frozenset(entry.models))
        for entry in parsed.keys
    ]
