"""``python -m serve_app`` / ``modelopt-serve``: check a registry before serving it.

    python -m serve_app validate models.yaml      # schema and paths only
    python -m serve_app preflight models.yaml     # every preflight check (see docs/preflight.md)
    python -m serve_app preflight --checkpoint DIR
    python -m serve_app run models.yaml           # `serve run`, stopped gracefully (serve_app/run.py)

Serving is Ray's own ``serve run models.yaml``; ``run`` wraps it so that SIGINT/SIGTERM drain
the models before shutting down (what ``make serve`` uses).
Exit codes: 0 ok, 1 a check failed, 2 usage or YAML error (no command at all is a usage error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serve_app.errors import RegistryError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app",
        description="Check a models.yaml registry before serving it with `serve run models.yaml`.",
        epilog="Exit codes: 0 ok, 1 a check failed, 2 usage or YAML error.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{preflight,validate,run}")
    # preflight's own parser (preflight/cli.py) reads the rest of the line, --help included.
    commands.add_parser(
        "preflight", add_help=False, help="every preflight check (python -m serve_app preflight --help)"
    )
    validate = commands.add_parser("validate", help="schema and paths only")
    validate.add_argument("registry", type=Path, metavar="MODELS_YAML", help="Ray Serve config file")
    serve_run = commands.add_parser(
        "run", help="serve it (Ray's `serve run`); SIGINT/SIGTERM drain the models, then stop"
    )
    serve_run.add_argument("registry", type=Path, metavar="MODELS_YAML", help="Ray Serve config file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        if rest and args.command != "preflight":
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as exc:  # argparse exits 2 on a usage error and 0 for --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "preflight":
        from serve_app.preflight.cli import main as preflight_main

        return preflight_main(rest)
    if args.command == "run":
        return serve(args.registry)
    return validate(args.registry)


def serve(registry_path: Path) -> int:
    """``serve run`` with a graceful stop (serve_app/run.py); 2 for an invalid registry."""
    from serve_app.run import run

    try:
        return run(registry_path)
    except RegistryError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE


def validate(registry_path: Path) -> int:
    """Load and check models.yaml; print one line per model. 0 when valid, 2 otherwise."""
    from serve_app.registry.api_keys import load_keys
    from serve_app.registry.loader import load_registry

    try:
        registry = load_registry(registry_path)
        load_keys(registry.router.auth)  # a named key source must be readable (where this runs)
    except RegistryError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    for model in registry.models:
        print(f"{model.name}: {model.checkpoint} (engine {model.engine})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
