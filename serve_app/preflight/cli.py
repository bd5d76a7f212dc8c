"""``preflight``: check models before any GPU is claimed.

    python -m serve_app preflight models.yaml           # every model of a registry
    python -m serve_app preflight --checkpoint DIR      # one checkpoint, default settings
    modelopt-preflight models.yaml --json --no-data

Exit code: 0 nothing failed (warnings allowed), 1 a check failed, 2 usage or YAML error.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from serve_app.errors import RegistryError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preflight",
        description="Check ModelOpt FP8 checkpoints, the vLLM environment and GPU placement in seconds.",
        epilog="Exit code: 0 nothing failed (warnings allowed), 1 a check failed, 2 usage or YAML error.",
    )
    parser.add_argument("registry", nargs="?", type=Path, help="Ray Serve config file (models.yaml)")
    parser.add_argument(
        "--checkpoint", type=Path, metavar="DIR", help="check one checkpoint with default settings"
    )
    parser.add_argument("--app", metavar="NAME", help="the application in models.yaml, when it has several")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--no-data", action="store_true", help="headers only: skip reading scale values and FP8 weight bytes"
    )
    parser.add_argument(
        "--gpu-memory-gib", type=float, metavar="GIB", help="compare memory fit against a GPU of this size"
    )
    parser.add_argument(
        "--cluster-gpus",
        type=float,
        metavar="N",
        help="GPUs in the cluster (default: Ray's, else this node's)",
    )
    parser.add_argument(
        "--cluster-cpus",
        type=float,
        metavar="N",
        help="CPUs in the cluster (default: Ray's, else this machine's; not checked with RAY_ADDRESS)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on a usage error and 0 for --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if (args.registry is None) == (args.checkpoint is None):
        return _usage(parser, "give a registry file or --checkpoint DIR (one of them)")
    if args.gpu_memory_gib is not None and not 0 < args.gpu_memory_gib <= 1 << 20:  # NaN fails too
        return _usage(parser, "--gpu-memory-gib must be above 0 and at most 1048576 (1 PiB)")
    for flag, value in (("--cluster-gpus", args.cluster_gpus), ("--cluster-cpus", args.cluster_cpus)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            return _usage(parser, f"{flag} must be a number >= 0")
    # Imported here so that `--help` and usage errors stay instant.
    from serve_app.preflight.render import render, render_json
    from serve_app.preflight.runner import run_preflight, spec_for_checkpoint
    from serve_app.registry import load_registry
    from serve_app.registry.api_keys import load_keys

    try:
        if args.checkpoint is not None:
            if not args.checkpoint.is_dir():
                raise RegistryError(f"--checkpoint {args.checkpoint}: no such directory")
            models = [spec_for_checkpoint(args.checkpoint)]
        else:
            registry = load_registry(args.registry, app_name=args.app)
            # The router refuses to start with a named key source it cannot read: say so here,
            # before `make serve` starts the cluster (registry/api_keys.py).
            load_keys(registry.router.auth)
            models = registry  # with its router, whose replicas count in cluster_fit
    except RegistryError as exc:
        print(f"preflight: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = run_preflight(
        models,
        read_data=not args.no_data,
        gpu_memory_gib=args.gpu_memory_gib,
        cluster_gpus=args.cluster_gpus,
        cluster_cpus=args.cluster_cpus,
    )
    if args.json:
        print(render_json(report))
    else:
        render(report)
    return report.exit_code


def _usage(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"preflight: error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
