"""Checks 13-15: GPU capability, memory fit, tensor-parallel divisibility and cluster fit.

The memory estimate is what vLLM needs per GPU to start: the weight bytes from the safetensors
headers (split over tensor_parallel_size), the KV cache for at least one ``max_model_len``
sequence (vLLM refuses to start otherwise) and a fixed headroom; against GPU memory x
``gpu_memory_utilization`` (capped at the replica's share of a GPU when it asks for a fraction).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError

from serve_app.engines import selection
from serve_app.errors import MaxModelLenError
from serve_app.preflight import rules
from serve_app.preflight.gpu import GIB, GpuInfo
from serve_app.preflight.report import CheckResult, failed, passed, skipped, warned
from serve_app.preflight.safetensors_index import DTYPE_BYTES
from serve_app.registry.models import ModelSpec, RouterSpec

if TYPE_CHECKING:
    from serve_app.preflight.context import ModelContext

# What vLLM's profile run finds besides weights and KV cache: the CUDA context, CUDA graphs, the
# activations of one prefill chunk, NCCL buffers. 2 GiB covers 8B-class models at vLLM's default
# max_num_batched_tokens; the estimate is a floor, not a promise.
HEADROOM_BYTES = 2 * GIB
# vLLM's KV block when engine_args sets no block_size: CacheConfig.DEFAULT_BLOCK_SIZE
# (vllm/config/cache.py), which the CUDA attention backends these architectures use keep
# (FlashAttention, FlashInfer: Platform.update_block_size_for_backend).
KV_BLOCK_TOKENS = 16
# A fixed KV cache above this is a typo, not a GPU (and would overflow the float arithmetic of the
# messages): 1 PiB.
MOST_KV_BYTES = 1 << 50
NO_GPU = "no CUDA GPU visible"


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    tp: int
    kv_per_token: int  # bytes per token on one GPU
    max_model_len: int
    max_num_seqs: int | None
    headroom: int = HEADROOM_BYTES
    block_tokens: int = KV_BLOCK_TOKENS
    length_allowed: bool = True  # max_model_len within the checkpoint's (else check max_model_len fails)

    @property
    def weights_per_gpu(self) -> int:
        return self.weights // self.tp

    def kv(self, sequences: int) -> int:
        """KV bytes for ``sequences`` full-length ones, each in whole blocks of ``block_tokens``
        (vLLM's ``FullAttentionSpec.max_memory_usage_bytes``, vllm/v1/kv_cache_interface.py:
        ``cdiv(max_model_len, block_size) * page_size_bytes``, summed over the layers)."""
        tokens = -(-self.max_model_len // self.block_tokens) * self.block_tokens
        return self.kv_per_token * tokens * sequences

    def need(self, sequences: int = 1) -> int:
        return self.weights_per_gpu + self.kv(sequences) + self.headroom

    def describe(self) -> str:
        return (
            f"weights {gib(self.weights_per_gpu)}/GPU + KV for one {self.max_model_len}-token sequence "
            f"{gib(self.kv(1))} + headroom {gib(self.headroom)} = {gib(self.need(1))} per GPU"
        )

    def as_data(self) -> dict[str, int | None]:
        return {
            "weights_bytes": self.weights,
            "tensor_parallel_size": self.tp,
            "kv_bytes_per_token_per_gpu": self.kv_per_token,
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "headroom_bytes": self.headroom,
            "need_bytes_per_gpu": self.need(1),
        }


def estimate(ctx: ModelContext) -> MemoryEstimate:
    g, spec = ctx.geometry, ctx.spec
    tp = spec.tensor_parallel_size
    kv_heads_per_gpu = max(1, g.kv_heads // tp)  # vLLM replicates KV heads when tp > kv_heads
    kv_bytes = 1 if ctx.kv_is_fp8 else int(DTYPE_BYTES.get(g.dtype, 2))
    # The length vLLM would run with; past the checkpoint's limit, the registry's value.
    try:
        max_model_len, length_allowed = ctx.context_length().value, True
    except MaxModelLenError:
        max_model_len, length_allowed = ctx.spec.max_model_len or 0, False
    return MemoryEstimate(
        weights=ctx.ckpt.index.total_bytes,
        tp=tp,
        kv_per_token=2 * g.layers * kv_heads_per_gpu * g.head_dim * kv_bytes,
        max_model_len=max_model_len,
        max_num_seqs=spec.max_num_seqs,
        block_tokens=_block_tokens(spec),
        length_allowed=length_allowed,
    )


_INT = TypeAdapter(int)


def _as_vllm_int(value: object) -> int | None:
    """``value`` as vLLM's pydantic config reads an ``int`` (lax mode: ``2.0e10`` and
    ``"21474836480"`` are whole numbers, ``true`` is 1), or None when it reads none."""
    try:
        return _INT.validate_python(value)
    except ValidationError:
        return None


def _block_tokens(spec: ModelSpec) -> int:
    """engine_args.block_size as vLLM reads it, else vLLM's default."""
    size = _as_vllm_int(spec.engine_args.get("block_size"))
    return size if size is not None and 0 < size <= 1 << 20 else KV_BLOCK_TOKENS


def check_gpu_capability(ctx: ModelContext) -> CheckResult:
    name = "gpu_capability"
    engine, why = ctx.engine()
    if engine == "cpu":
        return skipped(name, why)
    if ctx.gpu is None:
        return skipped(name, NO_GPU)
    if ctx.gpu.capability is None:
        return skipped(name, f"{ctx.gpu.name}: compute capability unknown (nvidia-smi reports none)")
    vllm = ctx.env.vllm_version if ctx.env and ctx.env.vllm_version else rules.PINNED_VLLM
    need, rule = rules.min_capability(ctx.architecture, vllm)
    have = ctx.gpu.capability
    if have < need:
        return failed(
            name,
            f"{ctx.gpu.name} has compute capability {have[0]}.{have[1]}; FP8 W8A8 in vLLM {vllm} needs "
            f"{need[0]}.{need[1]} or newer ({rule.reason}; source: {rule.source})",
            "run this model on Ada, Hopper or Blackwell GPUs (L4, L40S, H100, H200, B200), e.g. with "
            "resources.accelerator_type, or serve a BF16 checkpoint on this GPU",
        )
    return passed(name, f"{ctx.gpu.name}: compute capability {have[0]}.{have[1]} >= {need[0]}.{need[1]}")


def _target(ctx: ModelContext) -> tuple[int | None, str]:
    if ctx.gpu_memory_gib is not None:
        return int(ctx.gpu_memory_gib * GIB), f"{ctx.gpu_memory_gib:g} GiB GPU (--gpu-memory-gib)"
    if ctx.gpu is not None:
        return ctx.gpu.total_memory, f"{ctx.gpu.name} ({gib(ctx.gpu.total_memory)})"
    return None, ""


def check_memory_fit(ctx: ModelContext) -> CheckResult:
    """Check 14 (docs/preflight.md): whether vLLM can start this model on its share of the GPU,
    in bytes per GPU, and how many full-length sequences its KV cache holds; a fixed
    ``engine_args.kv_cache_memory_bytes`` is measured by ``_fixed_kv_fit``."""
    name = "memory_fit"
    est = estimate(ctx)
    engine, why = ctx.engine()
    total, label = _target(ctx)
    if ctx.spec.engine == "cpu" or (engine == "cpu" and ctx.gpu_memory_gib is None):
        return skipped(name, f"{why}; vLLM would need {est.describe()}", **est.as_data())
    if total is None:
        return skipped(name, f"no GPU to compare against; vLLM needs {est.describe()}", **est.as_data())
    spec = ctx.spec
    if spec.resources.num_gpus == 0:
        return failed(
            name,
            "resources.num_gpus 0: Ray gives the replica no GPU, and vLLM cannot start without one",
            "set resources.num_gpus to tensor_parallel_size (or a share of a GPU, e.g. 0.45 with "
            "gpu_memory_utilization 0.45), or use engine: cpu",
            **est.as_data(),
        )
    share = min(1.0, spec.resources.num_gpus / spec.tensor_parallel_size) if spec.resources.num_gpus else 1.0
    if spec.gpu_memory_utilization > share + 1e-9:
        return failed(
            name,
            f"gpu_memory_utilization {spec.gpu_memory_utilization:g} but a replica gets {share:g} of a GPU "
            f"(resources.num_gpus {spec.resources.num_gpus:g}); a second replica on that GPU cannot start "
            "(vLLM starts only when gpu_memory_utilization x the GPU's memory is free)",
            f"set gpu_memory_utilization to at most {share:g}",
            **est.as_data(),
        )
    if spec.engine_args.get("kv_cache_memory_bytes") is not None:
        return _fixed_kv_fit(est, spec.engine_args["kv_cache_memory_bytes"], total, label, share)
    budget = int(total * spec.gpu_memory_utilization)
    data = {**est.as_data(), "budget_bytes_per_gpu": budget}
    where = f"{label} x gpu_memory_utilization {spec.gpu_memory_utilization:g} = {gib(budget)}"
    if est.need(1) > budget:
        return failed(
            name,
            f"does not fit: {est.describe()}; available {where}",
            "raise tensor_parallel_size, lower max_model_len, use kv_cache_dtype: fp8, raise "
            "gpu_memory_utilization, or place the model on a larger GPU",
            **data,
        )
    room = budget - est.weights_per_gpu - est.headroom
    sequences = room // max(1, est.kv(1))
    fits = f"{est.describe()}; available {where}; KV room {gib(room)} = {_sequences(sequences, est)}"
    warnings, fixes = [], []
    if est.max_num_seqs is not None and sequences < est.max_num_seqs:
        warnings.append(f"fewer than max_num_seqs {est.max_num_seqs}")
        fixes.append(FEWER_SEQS_FIX)
    if share < 1.0:
        warnings.append(
            f"a replica gets {share:g} of each GPU (resources.num_gpus {spec.resources.num_gpus:g} / "
            f"tensor_parallel_size {spec.tensor_parallel_size}), and vLLM sizes its KV cache by "
            "profiling free memory at start: replicas starting at once on one GPU count each other's "
            "allocations as their own (vllm/utils/mem_utils.py, memory_profiling), which can leave one "
            "with no KV cache"
        )
        fixes.append(
            f"set engine_args.kv_cache_memory_bytes (at most {room}, {gib(room)}, here: the KV room above)"
        )
    if warnings:
        return warned(name, f"{fits}; " + "; ".join(warnings), "; ".join(fixes), **data)
    return passed(name, fits, **data)


def _sequences(count: int, est: MemoryEstimate) -> str:
    return f"{count} sequence{'' if count == 1 else 's'} of {est.max_model_len} tokens"


FEWER_SEQS_FIX = (
    "lower max_num_seqs or max_model_len to what fits, or accept that vLLM preempts long sequences"
)


def _fixed_kv_fit(est: MemoryEstimate, value: object, total: int, label: str, share: float) -> CheckResult:
    """memory_fit with a fixed KV cache: vLLM then sizes the cache by ``kv_cache_memory_bytes`` and
    not by ``gpu_memory_utilization`` (vllm/config/cache.py, CacheConfig.kv_cache_memory_bytes: "when
    not-None ignores gpu_memory_utilization"), so a replica takes weights + that cache + headroom,
    which must fit its share of each GPU (``resources.num_gpus`` / tensor_parallel_size, at most 1):
    the rest of the GPU is other replicas' share. ``value`` is read as vLLM reads it
    (``_as_vllm_int``). vLLM refuses to start when the cache holds less than one ``max_model_len``
    sequence (in whole KV blocks)."""
    name = "memory_fit"
    fixed_kv = _as_vllm_int(value)
    if fixed_kv is None or isinstance(value, bool) or not 0 < fixed_kv <= MOST_KV_BYTES:
        return failed(name, _not_a_size(value), _NOT_A_SIZE_FIX, **est.as_data())
    share_bytes = int(total * share)
    footprint = est.weights_per_gpu + fixed_kv + est.headroom
    data = {
        **est.as_data(),
        "kv_cache_memory_bytes": fixed_kv,
        "need_bytes_per_gpu": footprint,
        "budget_bytes_per_gpu": share_bytes,
    }
    where = f"{label} x a replica's share {share:g} = {gib(share_bytes)}"
    if fixed_kv < est.kv(1) and est.length_allowed:
        return failed(
            name,
            f"engine_args.kv_cache_memory_bytes {fixed_kv} holds less than one {est.max_model_len}-token "
            f"sequence ({est.kv(1)} bytes in whole {est.block_tokens}-token blocks); vLLM refuses to start",
            f"raise kv_cache_memory_bytes to at least {est.kv(1)}, or lower max_model_len",
            **data,
        )
    takes = (
        f"weights {gib(est.weights_per_gpu)}/GPU + KV cache {gib(fixed_kv)} "
        f"(engine_args.kv_cache_memory_bytes) + headroom {gib(est.headroom)} = {gib(footprint)} per GPU"
    )
    if footprint > share_bytes:
        most = share_bytes - est.weights_per_gpu - est.headroom
        more_gpu = " or raise resources.num_gpus (this replica's share of a GPU)" if share < 1.0 else ""
        fix = (
            f"lower kv_cache_memory_bytes to at most {most} ({gib(most)}){',' if more_gpu else ''}{more_gpu}"
            if most >= est.kv(1)
            else f"place the model on a larger GPU{',' if more_gpu else ''}{more_gpu}, or spread its "
            "weights with a larger tensor_parallel_size"
        )
        return failed(name, f"does not fit: {takes}; available {where}", fix, **data)
    sequences = fixed_kv // max(1, est.kv(1))
    fits = f"{takes}; available {where}; KV cache = {_sequences(sequences, est)}"
    if est.max_num_seqs is not None and sequences < est.max_num_seqs:
        return warned(name, f"{fits}, fewer than max_num_seqs {est.max_num_seqs}", FEWER_SEQS_FIX, **data)
    return passed(name, fits, **data)


_NOT_A_SIZE_FIX = (
    "set it in bytes, e.g. 21474836480 for 20 GiB, or remove it to size the cache by gpu_memory_utilization"
)


def _not_a_size(value: object) -> str:
    """Why ``value`` is no ``kv_cache_memory_bytes``, with the likely slip: YAML's reading of
    ``2e10`` as text, ``vllm serve``'s ``20G`` (its CLI parses suffixes, vllm/engine/arg_utils.py
    human_readable_int; the engine argument takes bytes), or a 0 that vLLM takes as unset."""
    why = (
        f"engine_args.kv_cache_memory_bytes {value!r} is not a KV cache size: it is a whole number "
        f"of bytes per GPU, above 0 and at most {MOST_KV_BYTES} (1 PiB)"
    )
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return f"{why}; `vllm serve --kv-cache-memory-bytes` takes suffixes such as 20G, engine_args not"
        return f"{why} (YAML read this one as text: 2e10 is text to YAML, 2.0e+10 a number)"
    if value == 0:
        return f"{why}; vLLM would take 0 as unset and size the cache by profiling"
    return why


def check_parallelism(ctx: ModelContext) -> CheckResult:
    name = "parallelism"
    engine, why = ctx.engine()
    if engine == "cpu":
        return skipped(name, why)
    g, tp = ctx.geometry, ctx.spec.tensor_parallel_size
    problems = []
    if g.heads % tp:
        problems.append(f"{g.heads} attention heads are not divisible by tensor_parallel_size {tp}")
    if (g.kv_heads % tp) if g.kv_heads >= tp else (tp % g.kv_heads):
        problems.append(
            f"{g.kv_heads} KV heads: tensor_parallel_size {tp} must divide them, or be a multiple of them "
            "(vLLM then replicates KV heads)"
        )
    if g.intermediate is not None and g.intermediate % tp:
        problems.append(f"intermediate_size {g.intermediate} is not divisible by tensor_parallel_size {tp}")
    if ctx.gpu is not None and tp > ctx.gpu.count:
        problems.append(f"a replica needs {tp} GPUs on one node; this node has {ctx.gpu.count}")
    if problems:
        most = ctx.gpu.count if ctx.gpu is not None else g.heads
        sizes = [d for d in range(1, most + 1) if _fits(g.heads, g.kv_heads, g.intermediate, d)]
        where = " that fits this node" if ctx.gpu is not None else ""
        return failed(
            name, "; ".join(problems), f"use a tensor_parallel_size{where}: {', '.join(map(str, sizes[:6]))}"
        )
    return passed(
        name, f"tensor_parallel_size {tp} divides {g.heads} attention heads and {g.kv_heads} KV heads"
    )


def _fits(heads: int, kv: int, intermediate: int | None, tp: int) -> bool:
    kv_ok = kv % tp == 0 if kv >= tp else tp % kv == 0
    return heads % tp == 0 and kv_ok and (intermediate is None or intermediate % tp == 0)


def check_cluster_fit(
    demands: list[tuple[ModelSpec, str]],
    gpu: GpuInfo | None,
    cluster_gpus: float | None,
    cluster_resources: Mapping[str, float] | None = None,
    *,
    router: RouterSpec | None = None,
    cluster_cpus: float | None = None,
) -> CheckResult:
    """demands: (spec, resolved engine) of every model that will be deployed; ``router``: the
    registry's router application, whose replicas take CPUs too (None: not deployed here).

    GPUs, then CPUs, then custom resources (``resources.resources``), against the cluster's:
    ``cluster_gpus``/``cluster_cpus`` when given, else ``cluster_resources`` (default: the
    connected Ray cluster's, ``ray.cluster_resources()``), else this machine's, where
    ``serve run`` starts a one-node cluster. Ray keeps a replica it cannot place pending forever
    ("has taken more than 30s to be scheduled"), so any shortfall fails. Totals only: that one
    node holds all of a replica's resources at once is Ray's to find out."""
    result = _gpu_fit(demands, gpu, cluster_gpus)
    if cluster_resources is None:
        cluster_resources = selection.cluster_resources()
    for extra in (
        _cpu_fit(demands, router, cluster_cpus, cluster_resources),
        _custom_fit(demands, cluster_resources),
    ):
        if extra is None:
            continue
        status, detail, fix, data = extra
        merged = {**result.data, **data}
        if status == "fail" and result.status != "fail":
            result = failed(result.name, detail, fix, **merged)
        elif status == "fail":
            result = failed(result.name, f"{result.detail}; {detail}", result.fix, **merged)
        else:
            result = CheckResult(result.name, result.status, f"{result.detail}; {detail}", result.fix, merged)
    return result


def _cpu_fit(
    demands: list[tuple[ModelSpec, str]],
    router: RouterSpec | None,
    cluster_cpus: float | None,
    cluster_resources: Mapping[str, float] | None,
) -> tuple[str, str, str, dict[str, float]] | None:
    """(status, detail, fix, data) for the CPUs min_replicas and the router's replicas ask for."""
    parts = [
        (spec.name, spec.autoscaling.min_replicas, selection.cpus_per_replica(spec, engine))  # type: ignore[arg-type]
        for spec, engine in demands
    ]
    if router is not None:
        parts.append(("router", router.num_replicas, router.num_cpus))
    need = sum(replicas * per for _, replicas, per in parts)
    if need == 0:
        return None
    breakdown = "replicas x CPUs: " + _breakdown(parts)
    if cluster_cpus is not None:
        available, source = cluster_cpus, "the cluster"
    elif cluster_resources is not None:
        available, source = float(cluster_resources.get("CPU", 0.0)), "the Ray cluster"
    elif os.environ.get("RAY_ADDRESS"):
        return (
            "pass",
            f"CPUs not checked: `serve run` joins the Ray cluster at RAY_ADDRESS, which preflight "
            f"is not connected to (pass --cluster-cpus N); min_replicas need {need:g} CPUs ({breakdown})",
            "",
            {"need_cpus": need},
        )
    else:
        available, source = float(selection.local_cpus()), "this machine"  # as Ray counts it
    data = {"need_cpus": need, "available_cpus": available}
    if need > available + 1e-9:
        return (
            "fail",
            f"min_replicas need {need:g} CPUs ({breakdown}) but {source} has {available:g}; "
            "replicas beyond that wait for a CPU forever",
            "lower resources.num_cpus (fractions such as 0.5 are allowed; it is Ray's reservation, "
            "not a limit), the router's num_cpus or autoscaling.min_replicas, or add CPUs",
            data,
        )
    return "pass", f"{need:g} of {available:g} CPUs ({source}; {breakdown})", "", data


def _breakdown(parts: list[tuple[str, int, float]]) -> str:
    """``(name, replicas, amount per replica)`` as "m0: 2 x 0.5, m1: 1 x 1", leaving out zeros."""
    return ", ".join(f"{n}: {r} x {p:g}" for n, r, p in parts if r * p)


def _custom_fit(
    demands: list[tuple[ModelSpec, str]], available: Mapping[str, float] | None
) -> tuple[str, str, str, dict[str, float]] | None:
    """(status, detail, fix, data) for the custom resources min_replicas need; None when none
    asks. ``available``: the connected Ray cluster's resources (None: not connected)."""
    need: dict[str, float] = {}
    for spec, _ in demands:
        for resource, amount in spec.resources.resources.items():
            need[resource] = need.get(resource, 0.0) + spec.autoscaling.min_replicas * amount
    if not need:
        return None
    asked = ", ".join(f"{r}: {n:g}" for r, n in sorted(need.items()))
    if available is None:
        return "pass", f"custom resources ({asked}) not checked: not connected to a Ray cluster", "", {}
    short = [r for r, n in sorted(need.items()) if n > available.get(r, 0.0) + 1e-9]
    if short:
        have = ", ".join(f"{r}: {available.get(r, 0.0):g}" for r in short)
        return (
            "fail",
            f"min_replicas need custom resources {asked} but the Ray cluster has {have}; "
            "replicas beyond that wait for a node with the resource forever",
            "start nodes with the resource (`ray start --resources '{\"NAME\": AMOUNT}'`), or change "
            "resources.resources or autoscaling.min_replicas",
            {},
        )
    return (
        "pass",
        f"custom resources {asked} of the Ray cluster's "
        + ", ".join(f"{r}: {available[r]:g}" for r in sorted(need)),
        "",
        {},
    )


def check_checkpoint_nodes(view: selection.NodeView | None) -> CheckResult:
    """Say where the checkpoints were read: preflight sees only the filesystem of the node it
    runs on (the driver, or where ``serve run`` built the app). Warns on a multi-node cluster,
    where a replica may land on a node whose copy is missing; the replica checks it there
    (deployments/node_check.py) and fails naming its node."""
    name = "checkpoint_nodes"
    if view is None:
        return skipped(
            name,
            f"checkpoints read on host {socket.gethostname()} only (not connected to a Ray cluster); "
            "each replica checks its checkpoint again on the node where it starts",
        )
    if view.alive_nodes <= 1:
        return passed(name, f"checkpoints read on {view.here}, the Ray cluster's only node")
    return warned(
        name,
        f"checkpoints read on {view.here} only; the Ray cluster has {view.alive_nodes} nodes, and "
        "each replica checks its checkpoint again on the node where it starts",
        "make each checkpoint exist at the same path on every node that may run its replicas "
        "(a shared filesystem, or a copy per node), or pin the model to such nodes with "
        "resources.resources",
    )


def _gpu_fit(
    demands: list[tuple[ModelSpec, str]], gpu: GpuInfo | None, cluster_gpus: float | None
) -> CheckResult:
    """GPUs at min_replicas against the cluster's (a shortfall fails: Ray leaves those replicas
    pending forever), with warnings for what would not fit later: max_replicas beyond the GPUs, and
    ``engine: auto`` models that claim no GPU only because vLLM is not installed where preflight
    runs (``--cluster-gpus`` on a machine without vLLM), with what they would claim where it is."""
    name = "cluster_fit"
    parts = [
        (spec.name, spec.autoscaling.min_replicas, selection.gpus_per_replica(spec, engine))
        for spec, engine in demands
    ]
    need = sum(replicas * per for _, replicas, per in parts)
    breakdown = _breakdown(parts)
    available = cluster_gpus if cluster_gpus is not None else selection.cluster_gpus()
    source = "Ray cluster"
    if available is None and gpu is not None:
        available, source = float(gpu.count), "this node"
    if available is None:
        if need == 0:
            return passed(name, "no model needs a GPU at min_replicas")
        return skipped(name, f"{NO_GPU}; min_replicas need {need:g} GPUs ({breakdown})", need_gpus=need)
    data: dict[str, float] = {"need_gpus": need, "available_gpus": available} if need else {}
    if need > available:
        return failed(
            name,
            f"min_replicas need {need:g} GPUs ({breakdown}) but {source} has {available:g}; "
            "replicas beyond that wait for resources forever",
            "lower autoscaling.min_replicas or tensor_parallel_size, use fractional resources.num_gpus, "
            "or add GPUs",
            **data,
        )
    fits = (
        f"min_replicas need {need:g} of {available:g} GPUs ({source}; {breakdown})"
        if need
        else "no model needs a GPU at min_replicas"
    )
    warnings, fixes = [], []
    at_most = [(s.name, s.autoscaling.max_replicas, selection.gpus_per_replica(s, e)) for s, e in demands]
    most = sum(replicas * per for _, replicas, per in at_most)
    if most > available + 1e-9:
        data["max_replicas_gpus"] = most
        warnings.append(
            f"max_replicas would need {most:g} ({_breakdown(at_most)}): replicas the autoscaler adds "
            "beyond the GPUs wait for one, pending, while the others serve"
        )
        fixes.append("lower autoscaling.max_replicas to what fits")
    on_cpu = [spec for spec, engine in demands if spec.engine == "auto" and engine == "cpu"]
    if available > 0 and on_cpu:
        would = [(s.name, s.autoscaling.min_replicas, selection.gpus_per_replica(s, "vllm")) for s in on_cpu]
        total = need + sum(r * per for _, r, per in would)
        verdict = (
            f"more than the {available:g} there are: cluster_fit fails there"
            if total > available + 1e-9
            else f"which fits the {available:g} there are"
        )
        names = ", ".join(s.name for s in on_cpu)
        warnings.append(
            f"engine auto runs the CPU engine where vLLM is not installed (here), so {names} "
            f"{'claims' if len(on_cpu) == 1 else 'claim'} no GPU; where vLLM is, min_replicas need "
            f"{total:g} GPUs ({_breakdown(parts + would)}), {verdict}"
        )
        fixes.append(
            f"set engine: vllm on {names} to check {'it' if len(on_cpu) == 1 else 'them'} as a GPU "
            "machine runs it"
        )
    if warnings:
        return warned(name, f"{fits}; " + "; ".join(warnings), "; ".join(fixes), **data)
    return passed(name, fits, **data)
