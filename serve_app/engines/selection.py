"""Which engine runs a model, and the EngineConfig it gets from the registry.

``engine: auto`` picks vLLM where a CUDA GPU and vLLM are present, else the CPU reference engine.
What is present is probed once, by preflight (``preflight.context.probed_platform``).
Engine modules are imported only when chosen, so vLLM stays an optional extra.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from serve_app.engines.protocol import Engine, EngineConfig
from serve_app.registry.models import ModelSpec

ResolvedEngine = Literal["vllm", "cpu"]


@dataclass(frozen=True)
class Platform:
    """What the cluster offers, as far as engine choice cares."""

    has_vllm: bool
    gpus: float


def cluster_gpus() -> float | None:
    """GPUs in the Ray cluster this process is connected to; None when it is not connected.

    Ray is looked up in ``sys.modules``, never imported: a process that has not imported Ray
    cannot be connected to a cluster, and preflight must not pay Ray's import.
    """
    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return None
    return float(ray.cluster_resources().get("GPU", 0))


def resolve_engine(spec: ModelSpec, platform: Platform) -> ResolvedEngine:
    if spec.engine != "auto":
        return spec.engine
    return "vllm" if platform.has_vllm and platform.gpus > 0 else "cpu"


def engine_class(kind: ResolvedEngine) -> type[Engine]:
    if kind == "vllm":
        from serve_app.engines.vllm_engine import VLLMEngine

        return VLLMEngine
    from serve_app.engines.cpu import CPUReferenceEngine

    return CPUReferenceEngine


def engine_config(spec: ModelSpec) -> EngineConfig:
    return EngineConfig(
        model_name=spec.name,
        checkpoint=spec.checkpoint,
        max_model_len=spec.max_model_len,
        max_num_seqs=spec.max_num_seqs,
        gpu_memory_utilization=spec.gpu_memory_utilization,
        tensor_parallel_size=spec.tensor_parallel_size,
        enforce_eager=spec.enforce_eager,
        kv_cache_dtype=spec.kv_cache_dtype,
        trust_remote_code=spec.trust_remote_code,
        compile_cache_dir=spec.compile_cache_dir,
        engine_args=dict(spec.engine_args),
    )
