"""Shared fixtures: real ModelOpt FP8 checkpoints made with scripts/make_checkpoint.py."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


make_checkpoint_module = _load_script("make_checkpoint")
make_vl_checkpoint_module = _load_script("make_vl_checkpoint")


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """make(arch, size, **overrides) -> a fresh ModelOpt FP8 checkpoint dir (cached per arguments)."""
    cache: dict[tuple, Path] = {}

    def make(arch: str = "qwen2", size: str = "tiny", seed: int = 0, **overrides) -> Path:
        key = (arch, size, seed, tuple(sorted(overrides.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ckpt-{arch}-{size}")
            cache[key] = make_checkpoint_module.make_checkpoint(out, arch, size, seed, "cpu", overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def qwen2_checkpoint(checkpoint_factory) -> Path:
    return checkpoint_factory("qwen2", "tiny")


@pytest.fixture(scope="session")
def llama_checkpoint(checkpoint_factory) -> Path:
    return checkpoint_factory("llama", "tiny")


@pytest.fixture(scope="session")
def vl_checkpoint(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen2.5-VL ModelOpt FP8 checkpoint (vision tower and lm_head BF16)."""
    out = tmp_path_factory.mktemp("ckpt-qwen2.5-vl-tiny")
    make_vl_checkpoint_module.make_vl_checkpoint(out, "tiny", 0, "cpu")
    return out


@pytest.fixture
def copy_checkpoint(tmp_path):
    """Copy a checkpoint to a scratch dir so a test can break it."""

    def copy(src: Path, name: str = "ckpt") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return copy
