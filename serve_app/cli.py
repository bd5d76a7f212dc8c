"""``python -m serve_app`` / ``modelopt-serve``: check a registry before serving it.

    python -m serve_app validate models.yaml      # schema and paths only
    python -m serve_app preflight models.yaml     # every preflight check (see docs/preflight.md)
    python -m serve_app preflight --checkpoint DIR

Serving itself is Ray's own ``serve run models.yaml``.
Exit codes: 0 ok, 1 a check failed, 2 usage or YAML error.
"""

from __future__ import annotations

import sys

from serve_app.errors import RegistryError

USAGE = __doc__ or ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "preflight":
        from serve_app.preflight.cli import main as preflight_main

        return preflight_main(rest)
    if command == "validate":
        return validate(rest)
    print(f"unknown command {command!r}; expected 'preflight' or 'validate'\n{USAGE}", file=sys.stderr)
    return 2


def validate(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m serve_app validate MODELS_YAML", file=sys.stderr)
        return 2
    from serve_app.registry.loader import load_registry

    try:
        registry = load_registry(argv[0])
    except RegistryError as exc:
        print(exc, file=sys.stderr)
        return 2
    for model in registry.models:
        print(f"{model.name}: {model.checkpoint} (engine {model.engine})")
    return 0
