"""Registry validation: what a user sees when models.yaml is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from serve_app.errors import RegistryError
from serve_app.registry import load_registry
from serve_app.registry.layout import serve_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, models: list[dict], **router) -> Path:
    """A models.yaml of the fleet layout (registry/layout.py): a router and one app per model."""
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(serve_config(models, router or None)))
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
    assert (
        f"{path}: application 'qwen' (name 'qwen'): field 'max_model_length': unknown field; "
        "did you mean 'max_model_len'? allowed fields here: " in message
    )
    assert "max_model_len" in message.split("allowed fields here:")[1]


def test_a_vllm_engine_argument_next_to_checkpoint_is_pointed_to_engine_args(tmp_path, ckpt_dir):
    """Copying a `vllm serve` flag into the model entry: the hint names engine_args, not the
    look-alike kv_cache_dtype."""
    path = write(tmp_path, [{"name": "qwen", "checkpoint": "ck", "kv_cache_memory_bytes": 21474836480}])
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert (
        f"{path}: application 'qwen' (name 'qwen'): field 'kv_cache_memory_bytes': unknown field; "
        "it is a vLLM engine argument: set it under engine_args ({kv_cache_memory_bytes: ...}); "
        "allowed fields here: " in str(info.value)
    )


def test_the_engine_argument_hint_never_names_a_field_the_app_sets_itself():
    """A name the hint sends to engine_args must not be one engine_args refuses (a model field,
    or one the app reserves): the user would be sent in a circle."""
    from serve_app.engines.vllm_mapping import FIRST_CLASS_FIELDS, RESERVED_FIELDS
    from serve_app.registry.engine_arg_names import VLLM_ENGINE_ARGS
    from serve_app.registry.models import ModelSpec

    refused = set(FIRST_CLASS_FIELDS) | set(RESERVED_FIELDS) | set(ModelSpec.model_fields)
    assert not VLLM_ENGINE_ARGS & refused


def test_autoscaling_config_without_target_is_refused(tmp_path, ckpt_dir):
    path = write(tmp_path, [{"name": "qwen", "checkpoint": "ck", "autoscaling": {"min_replicas": 1}}])
    document = yaml.safe_load(path.read_text())
    del document["applications"][1]["deployments"][0]["autoscaling_config"]["target_ongoing_requests"]
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(
        RegistryError,
        match=r"application 'qwen': deployments: ModelServer: autoscaling_config must set "
        r"target_ongoing_requests: Serve replaces the whole autoscaling_config, and its own default "
        r"\(2\) would add a replica for every 2 streams",
    ):
        load_registry(path)


def test_live_option_under_args_names_where_it_belongs(tmp_path, ckpt_dir):
    path = write(tmp_path, [{"name": "qwen", "checkpoint": "ck"}])
    document = yaml.safe_load(path.read_text())
    document["applications"][1]["args"]["max_ongoing_requests"] = 8
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(
        RegistryError,
        match=r"application 'qwen': field\(s\) max_ongoing_requests belong in the application's "
        r"'deployments:' entry \(- name: ModelServer\), where changing them restarts nothing",
    ):
        load_registry(path)
    document["applications"][1]["args"]["autoscaling"] = {"min_replicas": 1}
    path.write_text(yaml.safe_dump(document))
    renamed = r"under Ray Serve's names \(autoscaling -> autoscaling_config\),"
    with pytest.raises(RegistryError, match=renamed):
        load_registry(path)


def test_the_allowed_fields_of_a_model_leave_out_the_live_ones(tmp_path, ckpt_dir):
    path = write(tmp_path, [{"name": "qwen", "checkpoint": "ck", "max_model_length": 10}])
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    allowed = str(info.value).split("allowed fields here: ")[1].split(", ")
    assert "max_model_len" in allowed
    assert not {"autoscaling", "max_ongoing_requests", "max_queued_requests"} & set(allowed)


def test_one_application_layout_of_earlier_versions_says_how_to_move(tmp_path):
    path = tmp_path / "models.yaml"
    old = {"name": "llm", "import_path": "serve_app.app:build_app", "args": {"models": []}}
    path.write_text(yaml.safe_dump({"applications": [old]}))
    with pytest.raises(RegistryError, match=r"import_path serve_app.app:build_app \(one application"):
        load_registry(path)


def test_missing_checkpoint_directory(tmp_path):
    path = write(tmp_path, [{"name": "qwen", "checkpoint": "nowhere"}])
    with pytest.raises(
        RegistryError,
        match=r"application 'qwen' \(name 'qwen'\): field 'checkpoint': directory .*nowhere "
        r"does not exist",
    ):
        load_registry(path)


def test_negative_replica_count(tmp_path, ckpt_dir):
    scaling = {"min_replicas": -1, "target_ongoing_requests": 8}
    path = write(tmp_path, [{"name": "qwen", "checkpoint": "ck", "autoscaling": scaling}])
    with pytest.raises(
        RegistryError,
        match=r"deployments: ModelServer: invalid options:\n  autoscaling.min_replicas: Input should be "
        r"greater than or equal to 0",
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
    # The demo checkpoints are made by `make serve` (not by `make test`): paths are not checked.
    from serve_app.registry.layout import MODEL_IMPORT_PATH
    from serve_app.registry.loader import parse_model_args

    document = yaml.safe_load((ROOT / "models.yaml").read_text())
    apps = [app for app in document["applications"] if app["import_path"] == MODEL_IMPORT_PATH]
    models = [parse_model_args(app["args"], base_dir=ROOT, check_paths=False) for app in apps]
    assert [m.name for m in models] == ["qwen2-demo", "llama-demo", "qwen2-vl-demo"]
    live = [app["deployments"][0]["autoscaling_config"]["max_replicas"] for app in apps]
    assert live == [2, 2, 2]
    paths = {m.checkpoint.name for m in models}
    assert paths == {"qwen2-small", "llama-small", "qwen2.5-vl-tiny"}
    makefile = (ROOT / "Makefile").read_text()
    assert all(f"checkpoints/{path}/config.json:" in makefile for path in paths)
