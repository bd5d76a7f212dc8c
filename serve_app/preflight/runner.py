"""Run every check for every model and collect a Report.

    report = run_preflight(registry)              # probes the GPU and the environment once
    report = run_preflight(specs, gpu=GpuInfo(...), env=EnvInfo(...), read_data=False)

A check whose prerequisite failed is ``skipped`` and names it, so one defect fails one check.
Models are checked in parallel threads (header reads and the NaN scan release the GIL).
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve_app.engines import selection
from serve_app.preflight import checkpoint_checks as cc
from serve_app.preflight import environment_checks, placement, tensor_checks, tokenizer_check
from serve_app.preflight.checkpoint import load_checkpoint
from serve_app.preflight.context import ModelContext, probed_platform
from serve_app.preflight.environment import EnvInfo, probe_environment
from serve_app.preflight.gpu import GpuInfo, probe_gpu
from serve_app.preflight.report import CheckResult, ModelReport, Report, failed, skipped
from serve_app.registry.models import ModelSpec, RegistrySpec

Check = Callable[[ModelContext], CheckResult]
_CHECKPOINT = ("config", "quant_method", "shards")

# (name, function, checks that must not have failed), in the order reports list them.
CHECKS: tuple[tuple[str, Check, tuple[str, ...]], ...] = (
    ("config", cc.check_config, ()),
    ("quant_method", cc.check_quant_method, ()),
    ("config_agreement", cc.check_config_agreement, ()),
    ("exclusions", cc.check_exclusions, _CHECKPOINT),
    ("quantized_tensors", tensor_checks.check_quantized_tensors, _CHECKPOINT),
    ("excluded_tensors", tensor_checks.check_excluded_tensors, _CHECKPOINT),
    ("kv_cache_scales", tensor_checks.check_kv_cache_scales, _CHECKPOINT),
    ("tensor_shapes", tensor_checks.check_tensor_shapes, ("config", "shards")),
    ("shards", cc.check_shards, ()),
    ("tied_lm_head", cc.check_tied_lm_head, ("config", "shards")),
    ("max_model_len", cc.check_max_model_len, ("config",)),
    ("tokenizer", tokenizer_check.check_tokenizer, ()),
    ("vllm_environment", environment_checks.check_vllm_environment, ()),
    ("arch_extras", environment_checks.check_arch_extras, ("config",)),
    ("gpu_capability", placement.check_gpu_capability, ()),
    ("memory_fit", placement.check_memory_fit, ("config", "shards")),
    ("parallelism", placement.check_parallelism, ("config",)),
)
CHECK_NAMES = (*(name for name, _, _ in CHECKS), "cluster_fit", "checkpoint_nodes")


class _Probe(enum.Enum):
    PROBE = "probe"


PROBE = _Probe.PROBE
"""Default for ``gpu``/``env``: probe this machine. Pass None for "none present", or a fake."""


def run_preflight(
    models: RegistrySpec | Sequence[ModelSpec] | ModelSpec,
    *,
    gpu: GpuInfo | _Probe | None = PROBE,
    env: EnvInfo | _Probe | None = PROBE,
    read_data: bool = True,
    gpu_memory_gib: float | None = None,
    cluster_gpus: float | None = None,
    cluster_cpus: float | None = None,
) -> Report:
    """Check every model, then whether all models' min_replicas fit the cluster's GPUs, CPUs
    and custom resources. A ``RegistrySpec`` (a whole models.yaml) also counts its router's
    replicas; ``cluster_gpus``/``cluster_cpus`` override what the cluster is said to have."""
    started = time.perf_counter()
    specs = _specs(models)
    router = models.router if isinstance(models, RegistrySpec) else None
    gpu_info = probe_gpu() if gpu is PROBE else gpu
    env_info = probe_environment() if env is PROBE else env
    platform = probed_platform(gpu_info, env_info, cluster_gpus)

    def one(spec: ModelSpec) -> tuple[ModelContext, ModelReport]:
        ctx = ModelContext(
            spec,
            load_checkpoint(spec.checkpoint),
            gpu_info,
            env_info,
            read_data,
            gpu_memory_gib,
            platform=platform,
        )
        return ctx, _run_checks(ctx)

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(specs)))) as pool:
        done = list(pool.map(one, specs))
    # A failed model with policy "skip" is left out, so it claims no GPUs; a failed "fail" model
    # stops the app anyway.
    deployed = [
        (ctx.spec, ctx.engine()[0])
        for ctx, report in done
        if report.ok or ctx.spec.on_preflight_failure == "fail"
    ]
    cluster = [
        placement.check_cluster_fit(
            deployed, gpu_info, cluster_gpus, router=router, cluster_cpus=cluster_cpus
        ),
        placement.check_checkpoint_nodes(selection.node_view()),
    ]
    elapsed = time.perf_counter() - started
    return Report(models=[r for _, r in done], cluster=cluster, elapsed_s=elapsed, platform=platform)


def preflight_model(
    spec: ModelSpec,
    *,
    gpu: GpuInfo | _Probe | None = PROBE,
    env: EnvInfo | _Probe | None = PROBE,
    read_data: bool = True,
    gpu_memory_gib: float | None = None,
) -> ModelReport:
    """Every per-model check (1-15 except cluster fit) of one model."""
    ctx = ModelContext(
        spec,
        load_checkpoint(spec.checkpoint),
        probe_gpu() if gpu is PROBE else gpu,
        probe_environment() if env is PROBE else env,
        read_data,
        gpu_memory_gib,
    )
    return _run_checks(ctx)


def _run_checks(ctx: ModelContext) -> ModelReport:
    results: dict[str, CheckResult] = {}
    for name, _, _ in CHECKS:
        _result(name, ctx, results)
    return ModelReport(
        model=ctx.spec.name,
        checkpoint=str(ctx.spec.checkpoint),
        policy=ctx.spec.on_preflight_failure,
        results=[results[name] for name, _, _ in CHECKS],
    )


def _result(name: str, ctx: ModelContext, results: dict[str, CheckResult]) -> CheckResult:
    """Run one check (memoised) after its prerequisites; a crash becomes a failed check naming it."""
    if name in results:
        return results[name]
    check, needs = next((fn, deps) for n, fn, deps in CHECKS if n == name)
    blocked = [n for n in needs if _result(n, ctx, results).status == "fail"]
    if blocked:
        results[name] = skipped(name, f"needs check {', '.join(map(repr, blocked))} to pass first")
    else:
        try:
            results[name] = check(ctx)
        except Exception as exc:  # a crashing check must not hide the other checks' verdicts
            results[name] = failed(
                name,
                f"check crashed: {type(exc).__name__}: {exc}",
                "report this as a preflight bug, with the checkpoint's config",
            )
    return results[name]


def _specs(models: RegistrySpec | Sequence[ModelSpec] | ModelSpec) -> list[ModelSpec]:
    if isinstance(models, RegistrySpec):
        return list(models.models)
    if isinstance(models, ModelSpec):
        return [models]
    return list(models)


def spec_for_checkpoint(directory: str | Path, **fields: object) -> ModelSpec:
    """A default ModelSpec for ``--checkpoint DIR``: named after the directory, engine auto."""
    path = Path(directory).resolve()
    name = re.sub(r"\s+", "-", path.name) or "checkpoint"
    return ModelSpec.model_validate({"name": name, "checkpoint": path, **fields})
