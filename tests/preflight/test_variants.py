"""One defect per variant of a clean ModelOpt FP8 export; each fails exactly the check it breaks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from serve_app.preflight.safetensors_index import read_header
from tests.preflight.conftest import (
    GOOD_ENV,
    H100,
    NO_VLLM,
    check,
    edit_json,
    edit_quant,
    edit_tensors,
    exclude,
    failures,
    load_bench_module,
    shard,
)

Q = "model.layers.0.self_attn.q_proj"
K = "model.layers.0.self_attn.k_proj"
DOWN = "model.layers.1.mlp.down_proj"


def test_clean_checkpoint_passes_every_check_with_a_gpu(qwen2_checkpoint):
    report = check(qwen2_checkpoint)
    assert report.ok
    assert set(report.statuses().values()) == {"pass"}, report.statuses()


def test_clean_checkpoint_passes_everything_that_can_run_here(qwen2_checkpoint):
    report = check(qwen2_checkpoint, gpu=None, env=NO_VLLM)
    statuses = report.statuses()
    assert {s for n, s in statuses.items() if s != "skipped"} == {"pass"}
    assert {n for n, s in statuses.items() if s == "skipped"} == {
        "vllm_environment", "arch_extras", "gpu_capability", "memory_fit", "parallelism",
    }  # fmt: skip
    assert report.result("gpu_capability").detail == "CPU engine (engine auto, no CUDA GPU visible)"


def test_clean_llama_and_sharded_checkpoints_pass(llama_checkpoint, copy_checkpoint):
    assert check(llama_checkpoint).ok
    sharded = copy_checkpoint(llama_checkpoint)
    shard(sharded)
    report = check(sharded)
    assert report.ok and "index + 2 shards" in report.result("shards").detail


def _drop(name: str) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda t: t.pop(name)


def _set(name: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(t: dict[str, torch.Tensor]) -> None:
        t[name] = torch.tensor(value, dtype=torch.float32)

    return edit


def _to_bf16(t: dict[str, torch.Tensor]) -> None:
    t[f"{DOWN}.weight"] = t[f"{DOWN}.weight"].to(torch.bfloat16)


def _nan_byte(t: dict[str, torch.Tensor]) -> None:
    raw = t[f"{K}.weight"].view(torch.uint8).clone()
    raw.view(-1)[37] = 0x7F
    t[f"{K}.weight"] = raw.view(torch.float8_e4m3fn)


def _k_shape(t: dict[str, torch.Tensor]) -> None:
    t[f"{K}.weight"] = torch.zeros(48, 64).to(torch.float8_e4m3fn)


def _partial_qkv(ckpt: Path) -> None:
    """q_proj excluded (and exported as BF16 without scales) while k_proj and v_proj stay FP8."""

    def dequantize(t: dict[str, torch.Tensor]) -> None:
        weight = t[f"{Q}.weight"].float() * t.pop(f"{Q}.weight_scale")
        t.pop(f"{Q}.input_scale")
        t[f"{Q}.weight"] = weight.to(torch.bfloat16)

    edit_tensors(ckpt, dequantize)
    edit_quant(ckpt, lambda q: exclude(q, Q))


def _missing_shard(ckpt: Path) -> None:
    shard(ckpt)[1].unlink()


def _no_quant_config(ckpt: Path) -> None:
    edit_json(ckpt / "config.json", lambda c: c.pop("quantization_config"))
    (ckpt / "hf_quant_config.json").unlink()


def _nvfp4(ckpt: Path) -> None:
    edit_json(ckpt / "config.json", lambda c: c["quantization_config"].update(quant_algo="NVFP4"))
    edit_json(ckpt / "hf_quant_config.json", lambda c: c["quantization"].update(quant_algo="NVFP4"))


def _configs_disagree_on_exclusions(ckpt: Path) -> None:
    edit_json(ckpt / "hf_quant_config.json", lambda c: c["quantization"].update(exclude_modules=["lm_head"]))


def _configs_disagree_on_kv(ckpt: Path) -> None:
    edit_json(ckpt / "hf_quant_config.json", lambda c: c["quantization"].update(kv_cache_quant_algo="FP8"))


def _tensors(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    return lambda ckpt: edit_tensors(ckpt, edit)


# (id, how to break a copy of the clean checkpoint, spec fields, the one check that must fail)
VARIANTS: list[tuple[str, Callable[[Path], None], dict[str, Any], str]] = [
    ("missing input_scale", _tensors(_drop(f"{Q}.input_scale")), {}, "quantized_tensors"),
    ("missing weight_scale", _tensors(_drop(f"{DOWN}.weight_scale")), {}, "quantized_tensors"),
    ("bf16 where FP8 belongs", _tensors(_to_bf16), {}, "quantized_tensors"),
    ("NaN byte in FP8 weight", _tensors(_nan_byte), {}, "quantized_tensors"),
    ("zero weight_scale", _tensors(_set(f"{Q}.weight_scale", 0.0)), {}, "quantized_tensors"),
    ("infinite input_scale", _tensors(_set(f"{DOWN}.input_scale", float("inf"))), {}, "quantized_tensors"),
    ("stray scale on lm_head", _tensors(_set("lm_head.weight_scale", 1.0)), {}, "excluded_tensors"),
    ("configs disagree on exclusions", _configs_disagree_on_exclusions, {}, "config_agreement"),
    ("configs disagree on KV cache", _configs_disagree_on_kv, {}, "config_agreement"),
    ("unsupported algorithm NVFP4", _nvfp4, {}, "quant_method"),
    ("no quantization config", _no_quant_config, {}, "quant_method"),
    ("shape disagrees with config", _tensors(_k_shape), {}, "tensor_shapes"),
    ("partial q/k/v exclusion", _partial_qkv, {}, "exclusions"),
    ("missing shard", _missing_shard, {}, "shards"),
    ("TP size does not divide the heads", lambda ckpt: None, {"tensor_parallel_size": 3}, "parallelism"),
]


@pytest.mark.parametrize(
    ("breakage", "fields", "expected"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS]
)
def test_each_defect_fails_exactly_its_check(qwen2_checkpoint, copy_checkpoint, breakage, fields, expected):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    breakage(ckpt)
    report = check(ckpt, **fields)
    assert failures(report) == {expected}, {r.name: r.detail for r in report.failed_checks()}
    assert report.result(expected).fix


def test_messages_name_the_defect(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    edit_tensors(ckpt, _drop(f"{Q}.input_scale"))
    assert f"{Q}.input_scale is missing" in check(ckpt).result("quantized_tensors").detail

    nan = copy_checkpoint(qwen2_checkpoint, "nan")
    edit_tensors(nan, _nan_byte)
    assert (
        f"{K}.weight has a NaN byte (0x7F/0xFF) at element 37"
        in check(nan).result("quantized_tensors").detail
    )

    nvfp4 = copy_checkpoint(qwen2_checkpoint, "nvfp4")
    _nvfp4(nvfp4)
    result = check(nvfp4).result("quant_method")
    assert "ModelOpt algorithm NVFP4" in result.detail and "this deployment serves FP8" in result.detail

    partial = copy_checkpoint(qwen2_checkpoint, "partial")
    _partial_qkv(partial)
    detail = check(partial).result("exclusions").detail
    assert "model.layers.0.self_attn: q_proj excluded but k_proj, v_proj quantized" in detail


def test_value_defects_need_the_data_pass(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    edit_tensors(ckpt, _nan_byte)
    headers_only = check(ckpt, read_data=False)
    assert headers_only.ok
    assert "values not read (--no-data)" in headers_only.result("quantized_tensors").detail


def test_missing_shard_skips_the_tensor_checks_and_says_why(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    _missing_shard(ckpt)
    report = check(ckpt)
    assert "shard model-00002-of-00002.safetensors is listed" in report.result("shards").detail
    assert report.result("quantized_tensors").detail == "needs check 'shards' to pass first"


def test_model_too_big_for_the_gpu(qwen2_checkpoint, copy_checkpoint):
    """A 320M-token vocabulary makes embed_tokens and lm_head 40 GiB each (sparse on disk)."""
    bench = load_bench_module()
    ckpt = copy_checkpoint(qwen2_checkpoint)
    vocab = 320 * 1024 * 1024
    source = read_header(ckpt / "model.safetensors")
    raw = (ckpt / "model.safetensors").read_bytes()
    entries = []
    for name, info in source.tensors.items():
        if name in ("lm_head.weight", "model.embed_tokens.weight"):
            entries.append((name, info.dtype, (vocab, 64), None))
        else:
            entries.append((name, info.dtype, info.shape, raw[info.offset : info.offset + info.nbytes]))
    bench.write_safetensors(ckpt / "model.safetensors", entries)
    if (ckpt / "model.safetensors").stat().st_blocks * 512 > 1024**3:
        pytest.skip("this filesystem does not keep files sparse")
    edit_json(ckpt / "config.json", lambda c: c.update(vocab_size=vocab))
    report = check(ckpt)
    assert failures(report) == {"memory_fit"}
    result = report.result("memory_fit")
    assert result.detail.startswith("does not fit: weights 80.00 GiB/GPU")
    assert "NVIDIA H100 80GB HBM3 (80.00 GiB) x gpu_memory_utilization 0.9 = 72.00 GiB" in result.detail
    assert check(ckpt, tensor_parallel_size=4).result("memory_fit").status == "pass"
    assert GOOD_ENV.vllm_version and H100.count == 8


def test_older_export_with_only_hf_quant_config(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    edit_json(ckpt / "config.json", lambda c: c.pop("quantization_config"))
    report = check(ckpt)
    assert report.ok
    assert report.result("quant_method").detail == (
        "ModelOpt 0.47.0 FP8 from hf_quant_config.json (older export: only hf_quant_config.json)"
    )
    assert report.result("config_agreement").detail == "only hf_quant_config.json present; nothing to compare"


def test_another_quantization_method_fails(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    edit_json(
        ckpt / "config.json", lambda c: c["quantization_config"].update(quant_method="compressed-tensors")
    )
    report = check(ckpt)
    assert failures(report) == {"quant_method"}
    assert report.result("quant_method").detail == (
        "quantization method 'compressed-tensors' (config.json); this deployment serves ModelOpt FP8"
    )
