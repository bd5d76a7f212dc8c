"""Fixtures for preflight: fake GPUs and environments, and helpers that break checkpoints.

Every defect is made by editing a copy of a clean ModelOpt 0.47 FP8 export (tests/conftest.py),
rewriting tensors with ``safetensors.torch.save_file`` or editing the JSON files.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from serve_app.preflight import EnvInfo, GpuInfo, ModelReport, preflight_model, spec_for_checkpoint
from serve_app.registry.models import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3

H100 = GpuInfo("NVIDIA H100 80GB HBM3", (9, 0), 80 * GIB, count=8)
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", (8, 0), 80 * GIB, count=8)
GOOD_ENV = EnvInfo(
    vllm_version="0.24.0",
    vllm_torch_requirement="==2.11.0",
    vllm_cuda_major=13,
    vllm_cuda_libs=("libcudart.so.13", "libc10.so", "libtorch.so"),
    torch_version="2.11.0+cu130",
    torch_cuda="13.0",
    packages={"xformers": "0.0.35"},
)
NO_VLLM = EnvInfo(torch_version="2.13.0+cpu", torch_cuda=None, packages={"xformers": None})


def check(
    ckpt: Path | ModelSpec,
    gpu: GpuInfo | None = H100,
    env: EnvInfo | None = GOOD_ENV,
    read_data: bool = True,
    **spec_fields: Any,
) -> ModelReport:
    spec = ckpt if isinstance(ckpt, ModelSpec) else spec_for_checkpoint(ckpt, **spec_fields)
    return preflight_model(spec, gpu=gpu, env=env, read_data=read_data)


def failures(report: ModelReport) -> set[str]:
    return {r.name for r in report.failed_checks()}


def edit_tensors(directory: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document, indent=2))


def edit_quant(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply the same edit to both configs' quantization sections (config.json, hf_quant_config.json)."""
    edit_json(directory / "config.json", lambda c: edit(c["quantization_config"]))
    edit_json(directory / "hf_quant_config.json", lambda c: edit(c["quantization"]))


def exclude(section: dict[str, Any], *patterns: str) -> None:
    key = "ignore" if "ignore" in section else "exclude_modules"
    section[key] = [*section[key], *patterns]


def shard(directory: Path, parts: int = 2) -> list[Path]:
    """Split model.safetensors into ``parts`` shards plus model.safetensors.index.json."""
    single = directory / "model.safetensors"
    tensors = load_file(str(single))
    names = sorted(tensors)
    files, weight_map = [], {}
    for index in range(parts):
        chunk = names[index::parts]
        shard_name = f"model-{index + 1:05d}-of-{parts:05d}.safetensors"
        save_file({n: tensors[n] for n in chunk}, str(directory / shard_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, shard_name))
        files.append(directory / shard_name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index_doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2))
    single.unlink()
    return files


def load_bench_module():
    name = "bench_preflight"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def fp8_kv_checkpoint(tmp_path_factory) -> Path:
    """A llama checkpoint quantized with FP8_DEFAULT_CFG plus FP8_KV_CFG (k_scale/v_scale per layer)."""
    import modelopt.torch.quantization as mtq

    maker = sys.modules["make_checkpoint"]  # loaded by tests/conftest.py
    original = maker.quantize_fp8

    def quantize_with_kv(model: Any, vocab_limit: int, seed: int) -> Any:
        config = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
        config["quant_cfg"] = [*config["quant_cfg"], *mtq.FP8_KV_CFG["quant_cfg"]]
        generator = torch.Generator().manual_seed(seed)
        batches = [torch.randint(0, vocab_limit, (2, 32), generator=generator) for _ in range(4)]

        def calibrate(m: Any) -> None:
            with torch.no_grad():
                for batch in batches:
                    m(batch)

        return mtq.quantize(model, config, calibrate)

    maker.quantize_fp8 = quantize_with_kv
    try:
        return maker.make_checkpoint(tmp_path_factory.mktemp("ckpt-llama-kv"), "llama", "tiny", 0, "cpu", {})
    finally:
        maker.quantize_fp8 = original
