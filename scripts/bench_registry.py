"""The registries scripts/bench_serve.sh serves: models.yaml files for one checkpoint.

``single``: the router phases, one model (``model_replicas`` > 1: ``router_split``, that many
replicas of it sharing the one GPU). ``shared``: ``router_shared``, ``n`` models of the same
checkpoint sharing the one GPU (issue 13's target 3). Both pass preflight on one H200
(tests/test_bench_registry.py): run 7 lost 8 minutes of device time to a ``router_split`` registry
whose ``gpu_memory_utilization`` was above its ``resources.num_gpus``, which preflight's
``memory_fit`` refuses and Ray then retried for the call's whole timeout.

Usage (bench_serve.sh's): ``bench_registry.py single PATH CKPT MODEL PORT CACHE ROUTER_REPLICAS
BODY_BYTES ITEMS_PER_S MODEL_REPLICAS [STREAM_INTERVAL_MS]`` (empty strings for defaults),
``bench_registry.py shared PATH CKPT PORT CACHE N KV_GIB``, or ``share N`` / ``kv-bytes N
[KV_GIB]`` for the bare engines.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serve_app.registry.layout import serve_config

GIB = 2**30
GPU_SHARE = 0.9  # of the GPU's memory, split between the replicas or models that share it
KV_GIB = 40  # fixed KV cache, split likewise: replicas starting together skew each other's profiling


def share_of(n: int) -> float:
    """Each of ``n`` engines' ``gpu_memory_utilization`` and ``resources.num_gpus``: the same
    number, as preflight's ``memory_fit`` requires (a replica may use no more of the GPU's memory
    than the share Ray gives it), and ``n`` of them fit one GPU."""
    return round(GPU_SHARE / n, 3)


def single(
    ckpt: str,
    model: str,
    port: int,
    cache: str,
    router_replicas: int | None = None,
    body_bytes: int | None = None,
    items_per_s: float | None = None,
    model_replicas: int = 1,
    stream_interval_ms: float | None = None,
) -> dict[str, Any]:
    """One model on the whole GPU as ``vllm serve`` runs it (no max_model_len, max_num_seqs or
    enforce_eager of our own), or ``model_replicas`` replicas sharing it."""
    spec: dict[str, Any] = {
        "name": model,
        "checkpoint": ckpt,
        "engine": "vllm",
        "gpu_memory_utilization": GPU_SHARE,
        "resources": {"num_gpus": 1},
        "compile_cache_dir": cache,
    }
    if model_replicas > 1:
        spec.update(
            sharing_the_gpu(model_replicas),
            autoscaling={"min_replicas": model_replicas, "max_replicas": model_replicas},
        )
    if items_per_s:
        spec["stream_items_per_s"] = float(items_per_s)
    if stream_interval_ms:
        spec["stream_interval_ms"] = float(stream_interval_ms)
    router: dict[str, Any] = {}
    if router_replicas:
        router["num_replicas"] = int(router_replicas)
    if body_bytes:
        router["max_request_body_bytes"] = int(body_bytes)
    return serve_config([spec], router or None, port=port)


def kv_bytes_of(n: int, kv_gib: float | None = None) -> int:
    """Each of ``n`` engines' fixed KV cache in bytes: ``kv_gib`` GiB, else ``KV_GIB / n``."""
    return int((kv_gib if kv_gib else KV_GIB / n) * GIB)


def sharing_the_gpu(n: int, kv_gib: float | None = None) -> dict[str, Any]:
    """A model entry's fields for one of ``n`` engines on one GPU: ``share_of(n)`` of it, as
    memory and as Ray's share, and a fixed KV cache of ``kv_bytes_of(n, kv_gib)`` (the one place
    both router_split and router_shared take them from: run 7's fault was in both)."""
    share = share_of(n)
    return {
        "gpu_memory_utilization": share,
        "resources": {"num_gpus": share},
        "engine_args": {"kv_cache_memory_bytes": kv_bytes_of(n, kv_gib)},
    }


def shared(ckpt: str, port: int, cache: str, n: int, kv_gib: float | None = None) -> dict[str, Any]:
    """``n`` models ``m1`` .. ``mn`` of one checkpoint, each ``sharing_the_gpu(n, kv_gib)``
    (bench_serve.sh's bare_shared gives each ``vllm serve`` the same numbers)."""
    each = {"checkpoint": ckpt, "engine": "vllm", "compile_cache_dir": cache, **sharing_the_gpu(n, kv_gib)}
    models = [{"name": f"m{i}", **each} for i in range(1, n + 1)]
    return serve_config(models, port=port)


def main(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "share":  # share N: what each of N engines on one GPU gets
        print(share_of(int(rest[0])))
        return
    if kind == "kv-bytes":  # kv-bytes N [KV_GIB]
        print(kv_bytes_of(int(rest[0]), float(rest[1]) if len(rest) > 1 and rest[1] else None))
        return
    path, *rest = rest
    if kind == "single":
        ckpt, model, port, cache, replicas, body, items, model_replicas, *interval = rest
        doc = single(
            ckpt,
            model,
            int(port),
            cache,
            int(replicas) if replicas else None,
            int(body) if body else None,
            float(items) if items else None,
            int(model_replicas or 1),
            float(interval[0]) if interval and interval[0] else None,
        )
    elif kind == "shared":
        ckpt, port, cache, n, kv_gib = rest
        doc = shared(ckpt, int(port), cache, int(n), float(kv_gib) if kv_gib else None)
    else:
        raise SystemExit(f"bench_registry.py: unknown kind {kind!r} (single, shared, share, kv-bytes)")
    text = yaml.safe_dump(doc, sort_keys=False)
    Path(path).write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
