"""Preflight and the CPU engine treat a checkpoint and a registry entry as vLLM 0.24 does:
max_model_len against the checkpoint's limit, a stored lm_head under tied embeddings, and which
files hold the weights. Every checkpoint is a real ModelOpt export, edited."""

from __future__ import annotations

import asyncio

import pytest
import torch
from safetensors.torch import load_file, save_file

from serve_app.engines.fp8_loading import load_dequantized_model
from serve_app.errors import CheckpointLoadError, MaxModelLenError
from tests.engines.cpu_helpers import run
from tests.preflight.conftest import check, edit_json, edit_tensors, failures, shard

TOO_LONG = (
    "max_model_len 100000 is greater than the 2048 tokens this checkpoint supports "
    "(max_position_embeddings in config.json); vLLM refuses to start"
)
TOO_LONG_FIX = (
    "set max_model_len to 2048 or less, or set VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 where the replicas run "
    "(RoPE positions past 2048 give NaN; learned positions fail out of bounds)"
)


# --- max_model_len ----------------------------------------------------------------------------


def test_max_model_len_past_the_checkpoint_fails_preflight_with_both_numbers(qwen2_checkpoint, monkeypatch):
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    report = check(qwen2_checkpoint, max_model_len=100000)
    assert failures(report) == {"max_model_len"}
    result = report.result("max_model_len")
    assert (result.detail, result.fix) == (TOO_LONG, TOO_LONG_FIX)


def test_the_env_var_turns_it_into_a_warning(qwen2_checkpoint, monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    report = check(qwen2_checkpoint, max_model_len=100000)
    assert report.ok and report.result("max_model_len").status == "warn"
    assert report.result("memory_fit").data["max_model_len"] == 100000


def test_the_cpu_engine_refuses_it_before_loading(qwen2_checkpoint, monkeypatch):
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", raising=False)
    with pytest.raises(MaxModelLenError) as caught:
        run(qwen2_checkpoint, lambda engine: asyncio.sleep(0), max_model_len=100000)
    assert str(caught.value) == f"{TOO_LONG}; {TOO_LONG_FIX}"


def test_a_rope_scaled_extended_length_is_allowed(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    edit_json(ckpt / "config.json", lambda c: c.update(rope_scaling={"rope_type": "linear", "factor": 4.0}))
    report = check(ckpt, max_model_len=8192)
    assert report.ok
    assert report.result("max_model_len").detail == (
        "max_model_len 8192; the checkpoint allows 8192 (max_position_embeddings x RoPE factor 4)"
    )
    assert report.result("memory_fit").data["max_model_len"] == 8192
    assert run(ckpt, lambda engine: asyncio.sleep(0, engine.max_model_len)) == 8192  # the default, too
    assert failures(check(ckpt, max_model_len=8193)) == {"max_model_len"}


def test_default_length_is_the_checkpoints(qwen2_checkpoint):
    result = check(qwen2_checkpoint).result("max_model_len")
    assert (result.status, result.detail) == (
        "pass",
        "max_model_len 2048; the checkpoint allows 2048 (max_position_embeddings)",
    )


# --- tied embeddings --------------------------------------------------------------------------


def test_a_stored_lm_head_under_tied_embeddings_warns_and_the_cpu_engine_ignores_it(
    qwen2_checkpoint, copy_checkpoint
):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    edit_json(ckpt / "config.json", lambda c: c.update(tie_word_embeddings=True))
    edit_tensors(ckpt, lambda t: t.update({"lm_head.weight": t["lm_head.weight"] + 1}))  # differs
    report = check(ckpt)
    assert report.ok  # a warning: both engines load the embedding, so replicas agree
    result = report.result("tied_lm_head")
    assert (result.status, result.detail, result.fix) == (
        "warn",
        "tie_word_embeddings is true, so vLLM and the CPU engine use model.embed_tokens.weight as lm_head "
        "and ignore the stored lm_head.weight",
        "if the stored lm_head is the trained one, set tie_word_embeddings to false in config.json; "
        "otherwise delete the lm_head tensors from the checkpoint",
    )
    model = load_dequantized_model(ckpt)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    embedding = load_file(str(ckpt / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.equal(model.lm_head.weight, embedding)


def test_a_tied_model_without_lm_head_passes(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    edit_json(ckpt / "config.json", lambda c: c.update(tie_word_embeddings=True))
    edit_tensors(ckpt, lambda t: t.pop("lm_head.weight"))
    report = check(ckpt)
    assert report.ok
    assert report.result("tied_lm_head").detail == (
        "tie_word_embeddings is true: lm_head is model.embed_tokens.weight; none stored"
    )


def test_an_untied_model_without_lm_head_fails(qwen2_checkpoint, copy_checkpoint):
    """No tie_word_embeddings key: vLLM takes the config class's default, False, and needs lm_head."""
    ckpt = copy_checkpoint(qwen2_checkpoint)
    edit_json(ckpt / "config.json", lambda c: c.pop("tie_word_embeddings", None))
    edit_tensors(ckpt, lambda t: t.pop("lm_head.weight"))
    report = check(ckpt)
    assert failures(report) == {"tensor_shapes"}
    assert report.result("tensor_shapes").detail == "lm_head.weight is missing"
    with pytest.raises(CheckpointLoadError, match=r"missing tensors \(1\): lm_head\.weight"):
        load_dequantized_model(ckpt)


# --- which files hold the weights -------------------------------------------------------------


def test_shards_without_an_index_pass_and_load(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    shard(ckpt, parts=3)
    (ckpt / "model.safetensors.index.json").unlink()  # vLLM then reads every *.safetensors
    report = check(ckpt)
    assert report.ok
    assert report.result("shards").detail.startswith("3 file(s), ")
    sharded = load_dequantized_model(ckpt).state_dict()
    single = load_dequantized_model(qwen2_checkpoint).state_dict()
    assert sharded.keys() == single.keys()
    assert all(torch.equal(sharded[key], single[key]) for key in single)


def test_shards_with_an_index_ignore_a_stray_file_as_vllm_does(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    shard(ckpt, parts=2)
    save_file({"stray": torch.zeros(2)}, str(ckpt / "extra.safetensors"))
    report = check(ckpt)
    assert report.ok and report.result("shards").status == "warn"
    assert report.result("shards").detail.endswith(
        "; extra.safetensors not in model.safetensors.index.json; vLLM ignores them"
    )
    load_dequantized_model(ckpt)  # would fail with "unexpected tensors: stray" if it read the file


def test_mistral_format_files_fail(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    save_file({"x": torch.zeros(1)}, str(ckpt / "consolidated.safetensors"))
    message = (
        f"consolidated.safetensors in {ckpt}: vLLM then loads only consolidated*.safetensors in "
        "Mistral's format, not this Hugging Face export's files"
    )
    report = check(ckpt)
    assert "shards" in failures(report) and report.result("shards").detail == message
    with pytest.raises(CheckpointLoadError) as caught:
        load_dequantized_model(ckpt)
    assert str(caught.value) == message


def test_no_safetensors_at_all(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    message = f"no *.safetensors file in {ckpt} (vLLM would fall back to *.bin, which this app does not read)"
    assert check(ckpt).result("shards").detail == message
    with pytest.raises(CheckpointLoadError) as caught:
        load_dequantized_model(ckpt)
    assert str(caught.value) == message
