"""load_dequantized_model on real ModelOpt FP8 checkpoints (tests/conftest.py makes them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from serve_app.engines.fp8_loading import dequantize_fp8, load_dequantized_model
from serve_app.errors import CheckpointLoadError

LAYER = "model.layers.0.mlp.down_proj"


def _tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def _rewrite(checkpoint: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(checkpoint: Path, **changes) -> None:
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_every_fp8_weight_is_dequantized_with_its_scale(checkpoint_factory, arch):
    checkpoint = checkpoint_factory(arch, "tiny")
    tensors = _tensors(checkpoint)
    model = load_dequantized_model(checkpoint)
    params = dict(model.named_parameters())
    fp8_keys = [key for key, tensor in tensors.items() if tensor.dtype == torch.float8_e4m3fn]
    assert len(fp8_keys) == 14  # 7 linears per layer, 2 layers
    for key in fp8_keys:
        scale = tensors[key.removesuffix("weight") + "weight_scale"]
        expected = (tensors[key].float() * scale).to(torch.bfloat16)
        assert params[key].dtype == torch.bfloat16
        assert torch.equal(params[key], expected), key
    assert torch.equal(params["model.embed_tokens.weight"], tensors["model.embed_tokens.weight"])


def test_a_naive_transformers_load_ignores_the_scales(qwen2_checkpoint):
    from transformers import AutoModelForCausalLM

    naive = AutoModelForCausalLM.from_pretrained(str(qwen2_checkpoint))
    ours = load_dequantized_model(qwen2_checkpoint)
    naive_weight = naive.get_submodule(LAYER).weight
    our_weight = ours.get_submodule(LAYER).weight
    assert not torch.allclose(naive_weight.float(), our_weight.float())
    raw = _tensors(qwen2_checkpoint)
    assert torch.equal(naive_weight.float(), raw[f"{LAYER}.weight"].float())  # the scale was dropped


def test_float32_override_is_exact(qwen2_checkpoint):
    tensors = _tensors(qwen2_checkpoint)
    model = load_dequantized_model(qwen2_checkpoint, dtype="float32")
    weight = model.get_submodule(LAYER).weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, tensors[f"{LAYER}.weight"].float() * tensors[f"{LAYER}.weight_scale"])
    assert model.model.norm.weight.dtype == torch.float32


def test_dequantize_per_channel_and_per_block_scales():
    weight = torch.linspace(-2, 2, 12).reshape(4, 3).to(torch.float8_e4m3fn)
    per_channel = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = weight.float() * per_channel[:, None]
    assert torch.equal(dequantize_fp8(weight, per_channel, torch.float32), expected)
    assert torch.equal(dequantize_fp8(weight, per_channel[:, None], torch.float32), expected)
    blocks = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # blocks of 2 x 2, the last column a partial block
    full = torch.tensor([[1.0, 1.0, 2.0], [1.0, 1.0, 2.0], [3.0, 3.0, 4.0], [3.0, 3.0, 4.0]])
    assert torch.equal(dequantize_fp8(weight, blocks, torch.float32), weight.float() * full)


def test_missing_tensor_is_named(qwen2_checkpoint, copy_checkpoint):
    checkpoint = copy_checkpoint(qwen2_checkpoint)
    tensors = _tensors(checkpoint)
    del tensors["model.layers.1.post_attention_layernorm.weight"]
    _rewrite(checkpoint, tensors)
    missing = r"missing tensors \(1\): model\.layers\.1\.post_attention_layernorm\.weight$"
    with pytest.raises(CheckpointLoadError, match=missing):
        load_dequantized_model(checkpoint)


def test_unexpected_tensor_is_named(qwen2_checkpoint, copy_checkpoint):
    checkpoint = copy_checkpoint(qwen2_checkpoint)
    tensors = _tensors(checkpoint)
    tensors["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2, dtype=torch.bfloat16)
    _rewrite(checkpoint, tensors)
    unexpected = r"unexpected tensors \(1\): model\.layers\.0\.mlp\.extra_proj\.weight$"
    with pytest.raises(CheckpointLoadError, match=unexpected):
        load_dequantized_model(checkpoint)


def test_fp8_weight_without_scale_is_named(qwen2_checkpoint, copy_checkpoint):
    checkpoint = copy_checkpoint(qwen2_checkpoint)
    tensors = _tensors(checkpoint)
    del tensors[f"{LAYER}.weight_scale"]
    _rewrite(checkpoint, tensors)
    message = rf"FP8 tensor {LAYER}\.weight has no {LAYER}\.weight_scale$"
    with pytest.raises(CheckpointLoadError, match=message):
        load_dequantized_model(checkpoint)


def test_wrong_shape_is_named(qwen2_checkpoint, copy_checkpoint):
    checkpoint = copy_checkpoint(qwen2_checkpoint)
    _edit_config(checkpoint, intermediate_size=96)
    with pytest.raises(CheckpointLoadError, match=r"wrong shape \(6\): .*\(64, 128\) \(model: \(64, 96\)\)"):
        load_dequantized_model(checkpoint)


def test_other_modelopt_formats_are_refused(qwen2_checkpoint, copy_checkpoint):
    checkpoint = copy_checkpoint(qwen2_checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["quantization_config"]["quant_algo"] = "NVFP4"
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointLoadError, match="quant_algo 'NVFP4' is not supported"):
        load_dequantized_model(checkpoint)


def test_kv_cache_scales_are_dropped(qwen2_checkpoint, copy_checkpoint):
    checkpoint = copy_checkpoint(qwen2_checkpoint)
    tensors = _tensors(checkpoint)
    for layer in range(2):
        for proj in ("k_proj", "v_proj"):
            tensors[f"model.layers.{layer}.self_attn.{proj}.output_scale"] = torch.tensor(0.5)
        tensors[f"model.layers.{layer}.self_attn.k_scale"] = torch.tensor(0.5)
    _rewrite(checkpoint, tensors)
    load_dequantized_model(checkpoint)


def test_sharded_checkpoint_loads_like_a_single_file(qwen2_checkpoint, copy_checkpoint):
    checkpoint = copy_checkpoint(qwen2_checkpoint)
    tensors = _tensors(checkpoint)
    (checkpoint / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({key: tensors[key] for key in shard_keys}, str(checkpoint / name))
        weight_map.update(dict.fromkeys(shard_keys, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded = load_dequantized_model(checkpoint).state_dict()
    single = load_dequantized_model(qwen2_checkpoint).state_dict()
    assert sharded.keys() == single.keys()
    assert all(torch.equal(sharded[key], single[key]) for key in single)

    (checkpoint / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointLoadError, match=r"missing weight shards: model-00002-of-00002"):
        load_dequantized_model(checkpoint)


def test_tied_embeddings_without_lm_head(qwen2_checkpoint, copy_checkpoint):
    checkpoint = copy_checkpoint(qwen2_checkpoint)
    tensors = _tensors(checkpoint)
    del tensors["lm_head.weight"]
    _rewrite(checkpoint, tensors)
    with pytest.raises(CheckpointLoadError, match=r"missing tensors \(1\): lm_head\.weight"):
        load_dequantized_model(checkpoint)

    _edit_config(checkpoint, tie_word_embeddings=True)
    model = load_dequantized_model(checkpoint)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, tensors["model.embed_tokens.weight"])
