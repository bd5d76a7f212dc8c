"""Everything one model's checks look at, computed once: spec, checkpoint, probes, derived facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from serve_app.engines.context_length import ContextLength, effective_max_model_len
from serve_app.engines.selection import Platform, resolve_engine
from serve_app.preflight import rules
from serve_app.preflight.checkpoint import Checkpoint, Geometry, is_embedding
from serve_app.preflight.environment import EnvInfo
from serve_app.preflight.exclusions import Analysis, Resolver, analyse
from serve_app.preflight.gpu import GpuInfo
from serve_app.registry.models import ModelSpec

FP8_KV_DTYPES = ("fp8", "fp8_e4m3")


@dataclass
class ModelContext:
    spec: ModelSpec
    ckpt: Checkpoint
    gpu: GpuInfo | None
    env: EnvInfo | None
    read_data: bool = True
    gpu_memory_gib: float | None = None
    notes: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None  # run_preflight's, shared by every model; else from gpu/env
    allow_long: bool | None = None  # VLLM_ALLOW_LONG_MAX_MODEL_LEN; None: this process's environment

    @cached_property
    def geometry(self) -> Geometry:
        return self.ckpt.geometry()

    def context_length(self) -> ContextLength:
        """vLLM 0.24's max_model_len for this entry (engines/context_length.py).

        Raises MaxModelLenError when the registry's value is past the checkpoint's limit.
        """
        return effective_max_model_len(
            self.ckpt.text_config,
            self.spec.max_model_len,
            disable_sliding_window=bool(self.spec.engine_args.get("disable_sliding_window", False)),
            allow_long=self.allow_long,
        )

    @property
    def architecture(self) -> str:
        return self.ckpt.architecture or ""

    @cached_property
    def analysis(self) -> Analysis:
        quant = self.ckpt.quant
        resolver = Resolver(quant.exclude if quant else (), rules.fused_groups(self.architecture))
        required = rules.must_exclude(self.architecture, self.ckpt.is_tied(self.geometry))
        return analyse(resolver, self.ckpt.linear_modules(), sorted(self.ckpt.modules()), required)

    def quantized_modules(self) -> list[str]:
        return [m for m in self.ckpt.linear_modules() if not self.analysis.excluded(m)]

    def unquantized_modules(self) -> list[str]:
        """Excluded linears plus embeddings, which vLLM's ModelOpt FP8 never quantizes."""
        embeddings = [m for m, p in self.ckpt.modules().items() if is_embedding(m) and "weight" in p]
        return sorted({*(m for m in self.ckpt.linear_modules() if self.analysis.excluded(m)), *embeddings})

    @property
    def kv_cache_dtype(self) -> str:
        """The KV-cache dtype vLLM resolves: an explicit setting, else the checkpoint's declaration."""
        if self.spec.kv_cache_dtype != "auto":
            return self.spec.kv_cache_dtype
        quant = self.ckpt.quant
        return "fp8" if quant is not None and quant.kv_algo == "FP8" else "auto"

    @property
    def kv_is_fp8(self) -> bool:
        return self.kv_cache_dtype in FP8_KV_DTYPES

    def engine(self) -> tuple[str, str]:
        """('vllm' | 'cpu', why): the deployment builder's own rule, applied to what was probed."""
        platform = self.platform or probed_platform(self.gpu, self.env, cluster_gpus=None)
        if resolve_engine(self.spec, platform) == "vllm":
            return "vllm", ""
        if self.spec.engine == "cpu":
            return "cpu", "CPU engine"
        if platform.gpus == 0:
            return "cpu", "CPU engine (engine auto, no CUDA GPU visible)"
        return "cpu", "CPU engine (engine auto, vLLM not installed)"


def probed_platform(gpu: GpuInfo | None, env: EnvInfo | None, cluster_gpus: float | None) -> Platform:
    """What ``engine: auto`` is decided on, for preflight and for the deployment builder alike.

    GPUs: the Ray cluster's when this runs inside one (a head node without a GPU still serves
    models on its workers' GPUs), else this machine's, as nvidia-smi reported them. An
    environment that was not probed (None) counts as having vLLM, so the GPU checks run.
    """
    has_vllm = env is None or env.vllm_version is not None
    if cluster_gpus is not None:
        return Platform(has_vllm=has_vllm, gpus=cluster_gpus)
    return Platform(has_vllm=has_vllm, gpus=float(gpu.count) if gpu else 0.0)
