"""Preflight: checks that stop a bad checkpoint, environment or placement before any GPU is claimed.

    from serve_app.preflight import run_preflight
    report = run_preflight(registry)       # Report: .ok, .exit_code, .unavailable(), .blocking()
    render.raise_for_failures(report)      # PreflightFailed with the tables, when the app must not start

Nothing here imports vLLM or Ray; see docs/preflight.md for what each check catches.
"""

from serve_app.preflight.environment import EnvInfo, probe_environment
from serve_app.preflight.gpu import GpuInfo, probe_gpu
from serve_app.preflight.report import CheckResult, ModelReport, Report
from serve_app.preflight.runner import CHECK_NAMES, PROBE, preflight_model, run_preflight, spec_for_checkpoint

__all__ = [
    "CHECK_NAMES",
    "PROBE",
    "CheckResult",
    "EnvInfo",
    "GpuInfo",
    "ModelReport",
    "Report",
    "preflight_model",
    "probe_environment",
    "probe_gpu",
    "run_preflight",
    "spec_for_checkpoint",
]
