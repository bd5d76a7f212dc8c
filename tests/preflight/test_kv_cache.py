"""Check 7 on a real FP8-KV export (mtq.FP8_KV_CFG): k_scale/v_scale on every layer."""

from __future__ import annotations

import torch

from tests.preflight.conftest import check, edit_tensors, failures


def test_fp8_kv_checkpoint_passes(fp8_kv_checkpoint):
    report = check(fp8_kv_checkpoint)
    assert report.ok and set(report.statuses().values()) == {"pass"}
    assert report.result("kv_cache_scales").detail == (
        "FP8 KV cache (the checkpoint declares it): 4 scalar k/v scales for 2 layers; values finite and > 0"
    )
    assert report.result("memory_fit").data["kv_bytes_per_token_per_gpu"] == 128  # FP8: 1 byte


def test_zero_k_scale_fails_only_kv_cache_scales(fp8_kv_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(fp8_kv_checkpoint)
    edit_tensors(ckpt, lambda t: t.update({"model.layers.1.self_attn.k_proj.k_scale": torch.tensor(0.0)}))
    report = check(ckpt)
    assert failures(report) == {"kv_cache_scales"}
    assert (
        report.result("kv_cache_scales").detail
        == "model.layers.1.self_attn.k_proj.k_scale is 0 (must be > 0)"
    )


def test_a_layer_without_v_scale_fails(fp8_kv_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(fp8_kv_checkpoint)
    edit_tensors(ckpt, lambda t: t.pop("model.layers.1.self_attn.v_proj.v_scale"))
    report = check(ckpt)
    assert failures(report) == {"kv_cache_scales"}
    assert report.result("kv_cache_scales").detail == "layers without a KV scale: 1v"


def test_declared_fp8_kv_without_any_scale_warns(fp8_kv_checkpoint, copy_checkpoint, qwen2_checkpoint):
    ckpt = copy_checkpoint(fp8_kv_checkpoint)
    edit_tensors(ckpt, lambda t: [t.pop(n) for n in list(t) if n.endswith(("k_scale", "v_scale"))])
    report = check(ckpt)
    assert report.ok and report.result("kv_cache_scales").status == "warn"
    asked = check(qwen2_checkpoint, kv_cache_dtype="fp8").result("kv_cache_scales")
    assert asked.status == "warn" and asked.detail.startswith(
        "KV cache is FP8 (kv_cache_dtype fp8) but the checkpoint"
    )


def test_explicit_bf16_kv_cache_ignores_the_scales(fp8_kv_checkpoint):
    result = check(fp8_kv_checkpoint, kv_cache_dtype="bfloat16").result("kv_cache_scales")
    assert result.detail == "KV cache in BF16 (kv_cache_dtype bfloat16); 4 KV scales present, unused"
