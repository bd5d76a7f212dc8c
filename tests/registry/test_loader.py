"""Registry validation: what a user sees when models.yaml is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from serve_app.errors import RegistryError
from serve_app.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, models: list[dict], **args) -> Path:
    document = {
        "applications": [
            {
                "name": "llm",
                "route_prefix": "/",
                "import_path": "serve_app.app:build_app",
                "args": {"models": models, **args},
            }
        ]
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def ckpt_dir(tmp_path: Path) -> Path:
    (tmp_path / "ck").mkdir()
    return tmp_path / "ck"


def test_relative_checkpoint_resolves_against_the_yaml_folder(tmp_path, ckpt_dir, monkeypatch):
    monkeypatch.chdir("/")
    registry = load_registry(write(tmp_path, [{"name": "a", "checkpoint": "ck"}]))
    assert registry.models[0].checkpoint == ckpt_dir.resolve()


def test_defaults_suit_llm_engines(tmp_path, ckpt_dir):
    model = load_registry(write(tmp_path, [{"name": "a", "checkpoint": "ck"}])).models[0]
    assert model.engine == "auto"
    assert model.trust_remote_code is False
    assert model.max_ongoing_requests == 1024
    assert model.autoscaling.target_ongoing_requests == 64
    assert model.autoscaling.min_replicas == 1


def test_duplicate_name_is_rejected(tmp_path, ckpt_dir):
    path = write(
        tmp_path, [{"name": "a", "checkpoint": "ck"}, {"name": "b", "aliases": ["a"], "checkpoint": "ck"}]
    )
    with pytest.raises(RegistryError, match=re.escape("model name 'a' is used twice (by 'a' and 'b')")):
        load_registry(path)


def test_unknown_field_names_file_model_field_and_allowed_fields(tmp_path, ckpt_dir):
    path = write(tmp_path, [{"name": "qwen", "checkpoint": "ck", "max_model_length": 10}])
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    message = str(info.value)
    assert f"{path}: models[0] (name 'qwen'): field 'max_model_length': unknown field" in message
    assert "max_model_len" in message.split("allowed fields here:")[1]


def test_unknown_nested_field_lists_that_sections_fields(tmp_path, ckpt_dir):
    path = write(tmp_path, [{"name": "qwen", "checkpoint": "ck", "autoscaling": {"min_replica": 1}}])
    with pytest.raises(
        RegistryError,
        match=r"field 'autoscaling.min_replica': unknown field; allowed fields "
        r"here: downscale_delay_s, initial_replicas, max_replicas",
    ):
        load_registry(path)


def test_missing_checkpoint_directory(tmp_path):
    path = write(tmp_path, [{"name": "qwen", "checkpoint": "nowhere"}])
    with pytest.raises(
        RegistryError,
        match=r"models\[0\] \(name 'qwen'\): field 'checkpoint': directory .*nowhere "
        r"does not exist",
    ):
        load_registry(path)


def test_negative_replica_count(tmp_path, ckpt_dir):
    path = write(tmp_path, [{"name": "qwen", "checkpoint": "ck", "autoscaling": {"min_replicas": -1}}])
    with pytest.raises(
        RegistryError,
        match=r"field 'autoscaling.min_replicas': Input should be greater than or "
        r"equal to 0 \(got -1\)",
    ):
        load_registry(path)


def test_min_above_max_replicas(tmp_path, ckpt_dir):
    path = write(
        tmp_path, [{"name": "q", "checkpoint": "ck", "autoscaling": {"min_replicas": 3, "max_replicas": 2}}]
    )
    with pytest.raises(RegistryError, match=r"min_replicas \(3\) is larger than max_replicas \(2\)"):
        load_registry(path)


def test_bad_engine_value_says_what_is_allowed(tmp_path, ckpt_dir):
    path = write(tmp_path, [{"name": "q", "checkpoint": "ck", "engine": "tensorrt"}])
    with pytest.raises(
        RegistryError,
        match=r"field 'engine': Input should be 'auto', 'vllm' or 'cpu' "
        r"\(got 'tensorrt'\)",
    ):
        load_registry(path)


def test_not_a_serve_config(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models: []\n")
    with pytest.raises(RegistryError, match="expected a Ray Serve config file with an 'applications:' list"):
        load_registry(path)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("applications: [\n")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(path)


def test_committed_models_yaml_is_a_valid_registry_of_three_demo_models():
    document = yaml.safe_load((ROOT / "models.yaml").read_text())
    app = document["applications"][0]
    assert app["import_path"] == "serve_app.app:build_app"
    from serve_app.registry.loader import parse_registry

    registry = parse_registry(app["args"], base_dir=ROOT, check_paths=False)
    paths = {m.checkpoint.name for m in registry.models}
    assert paths == {"qwen2-small", "llama-small", "qwen2.5-vl-tiny"}
    makefile = (ROOT / "Makefile").read_text()
    assert all(f"checkpoints/{path}/config.json:" in makefile for path in paths)
