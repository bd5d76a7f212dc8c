"""Safetensors headers read without torch, and shard indexes."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open

from serve_app.preflight.safetensors_index import SafetensorsError, load_index, read_header
from serve_app.preflight.values import DataReader
from tests.preflight.conftest import shard

DTYPES = {"float8_e4m3fn": "F8_E4M3", "bfloat16": "BF16", "float32": "F32"}


def test_header_agrees_with_the_safetensors_library(qwen2_checkpoint):
    path = qwen2_checkpoint / "model.safetensors"
    header = read_header(path)
    raw = path.read_bytes()
    with safe_open(str(path), "pt") as f:
        assert set(header.tensors) == set(f.keys())
        for name, info in header.tensors.items():
            tensor = f.get_tensor(name)
            assert (info.dtype, info.shape) == (
                DTYPES[str(tensor.dtype).removeprefix("torch.")],
                tuple(tensor.shape),
            )
            data = raw[info.offset : info.offset + info.nbytes]
            assert data == tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    assert header.metadata == {"format": "pt"}


def test_scalar_values_read_back(qwen2_checkpoint):
    name = "model.layers.0.self_attn.q_proj.weight_scale"
    info = read_header(qwen2_checkpoint / "model.safetensors").tensors[name]
    with safe_open(str(qwen2_checkpoint / "model.safetensors"), "pt") as f, DataReader() as reader:
        assert reader.scalar(info) == pytest.approx(f.get_tensor(name).item())


def test_truncated_file_is_reported(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    path = ckpt / "model.safetensors"
    os.truncate(path, path.stat().st_size - 100)
    index = load_index(ckpt)
    assert len(index.problems) == 1
    assert "(truncated download or copy)" in index.problems[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01", "too short for a safetensors header"),
        (struct.pack("<Q", 10**9) + b"{}", "header length 1000000000 is impossible"),
        (struct.pack("<Q", 4) + b"{]]}", "header is not valid JSON"),
    ],
)
def test_broken_headers(tmp_path, content, message):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(SafetensorsError, match=message):
        read_header(tmp_path / "model.safetensors")


def test_sharded_index(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    shard(ckpt)
    index = load_index(ckpt)
    assert index.problems == [] and len(index.files) == 2
    assert len(index.tensors) == len(read_header(qwen2_checkpoint / "model.safetensors").tensors)

    doc = json.loads((ckpt / "model.safetensors.index.json").read_text())
    doc["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    moved = next(n for n, f in doc["weight_map"].items() if f.startswith("model-00002"))
    del doc["weight_map"][moved]
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(doc))
    (ckpt / "stray.safetensors").write_bytes((ckpt / "model-00001-of-00002.safetensors").read_bytes())
    index = load_index(ckpt)
    assert index.problems == [
        "model.safetensors.index.json maps 'model.layers.9.mlp.up_proj.weight' to "
        "model-00001-of-00002.safetensors, which lacks them",
        f"model-00002-of-00002.safetensors holds {moved!r}, which model.safetensors.index.json does not list",
    ]
    assert index.notes == ["stray.safetensors not in model.safetensors.index.json; vLLM ignores them"]


def test_no_weights(tmp_path):
    assert load_index(tmp_path).problems == [f"no *.safetensors file in {tmp_path}"]
