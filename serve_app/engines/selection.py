"""Which engine runs a model, and the EngineConfig it gets from the registry.

``engine: auto`` picks vLLM where a CUDA GPU and vLLM are present, else the CPU reference engine.
What is present is probed once, by preflight (``preflight.context.probed_platform``).
Engine modules are imported only when chosen, so vLLM stays an optional extra.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from serve_app.engines.node_cpus import node_cpus
from serve_app.engines.protocol import Engine, EngineConfig
from serve_app.registry.models import ModelSpec
from serve_app.registry.vision_models import vision_model

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
    resources = cluster_resources()
    return None if resources is None else float(resources.get("GPU", 0))


def _connected_ray():
    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return None
    return ray


def cluster_resources() -> dict[str, float] | None:
    """Every resource of the Ray cluster this process is connected to, custom ones included
    (``ray.cluster_resources()``: {"CPU": 8.0, "node_a": 1.0, ...}); None when not connected."""
    ray = _connected_ray()
    return None if ray is None else dict(ray.cluster_resources())


@dataclass(frozen=True)
class NodeView:
    """Where this process runs in its Ray cluster: ``here`` is "node <id> (<ip>)"."""

    here: str
    alive_nodes: int


def node_view() -> NodeView | None:
    """This process's Ray node and how many nodes are alive (``ray.nodes()``, read from the GCS);
    None when not connected to a Ray cluster."""
    ray = _connected_ray()
    if ray is None:
        return None
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    return NodeView(node_label(ray), alive)


def node_label(ray) -> str:
    """ "node <hex node id> (<ip>)", from ``ray.get_runtime_context()``, as replicas name their node."""
    from ray.util import get_node_ip_address

    return f"node {ray.get_runtime_context().get_node_id()} ({get_node_ip_address()})"


def resolve_engine(spec: ModelSpec, platform: Platform) -> ResolvedEngine:
    if spec.engine != "auto":
        return spec.engine
    return "vllm" if platform.has_vllm and platform.gpus > 0 else "cpu"


def gpus_per_replica(spec: ModelSpec, engine: str) -> float:
    """GPUs one replica asks Ray for (the builder) and counts for (preflight's cluster_fit):
    ``resources.num_gpus``, else ``tensor_parallel_size``; 0 for the CPU engine whatever the
    registry says, so one models.yaml with GPU shares (``engine: auto``) also runs on a machine
    without a GPU."""
    if engine != "vllm":
        return 0.0
    if spec.resources.num_gpus is not None:
        return spec.resources.num_gpus
    return float(spec.tensor_parallel_size)


# CPUs a replica asks Ray for when the registry does not say: vLLM's front end and its scheduler
# loop want a core; the CPU engine takes half, so two demo models and the router fit a 2-core
# machine (README, "models.yaml reference").
DEFAULT_NUM_CPUS: dict[ResolvedEngine, float] = {"vllm": 1.0, "cpu": 0.5}


def cpus_per_replica(spec: ModelSpec, engine: ResolvedEngine) -> float:
    """CPUs one replica asks Ray for (the builder) and counts for (preflight's cluster_fit):
    ``resources.num_cpus``, else ``DEFAULT_NUM_CPUS`` for the engine."""
    if spec.resources.num_cpus is not None:
        return spec.resources.num_cpus
    return DEFAULT_NUM_CPUS[engine]


def local_cpus() -> float:
    """The CPUs a Ray node started on this machine offers, container limits included, as Ray
    counts them (engines/node_cpus.py)."""
    return node_cpus()


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
        limit_images_per_prompt=spec.media.limit_per_prompt if vision_model(spec.checkpoint) else None,
    )
