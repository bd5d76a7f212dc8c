"""API keys outside Ray: where keys come from, which paths need one, exact messages."""

from __future__ import annotations

import pytest
import yaml

from serve_app.errors import AuthenticationError, ModelNotAllowedError, RegistryError
from serve_app.registry.models import AuthSpec
from serve_app.router.auth import ApiKeys, check_model_allowed


def test_off_by_default():
    assert ApiKeys.load(AuthSpec(), environ={}) is None


def test_keys_from_an_environment_variable_each_for_every_model():
    keys = ApiKeys.load(AuthSpec(api_keys_env="KEYS"), environ={"KEYS": " sk-one-1234 ,sk-two-1234,"})
    assert keys.authenticate("Bearer sk-two-1234").models is None
    with pytest.raises(AuthenticationError, match=r"^incorrect API key provided$"):
        keys.authenticate("Bearer sk-two-123")
    with pytest.raises(AuthenticationError, match=r"^missing API key"):
        keys.authenticate("Basic sk-one-1234")


def test_a_named_but_unset_variable_refuses_to_start_open():
    with pytest.raises(RegistryError, match=r"names KEYS, which is unset or empty where the router runs"):
        ApiKeys.load(AuthSpec(api_keys_env="KEYS"), environ={})


def test_keys_file_with_allow_lists(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"key": "sk-limited-1", "models": ["a"]}]}))
    key = ApiKeys.load(AuthSpec(api_keys_file=path), environ={}).authenticate("Bearer sk-limited-1")
    check_model_allowed(key, "a")
    with pytest.raises(ModelNotAllowedError, match=r"^this API key may not use model 'b'$"):
        check_model_allowed(key, "b")
    path.write_text(yaml.safe_dump({"keys": [{"key": "short"}]}))
    with pytest.raises(RegistryError, match=r"keys.0.key: String should have at least 8 characters"):
        ApiKeys.load(AuthSpec(api_keys_file=path), environ={})
    with pytest.raises(RegistryError, match=r"no such file where the router runs"):
        ApiKeys.load(AuthSpec(api_keys_file=tmp_path / "absent.yaml"), environ={})


def test_which_paths_need_a_key():
    open_ops = ApiKeys((), protect_metrics=False, protect_readyz=False)
    closed_ops = ApiKeys((), protect_metrics=True, protect_readyz=True)
    for path in ("/v1/models", "/v1/chat/completions", "/tokenize", "/detokenize"):
        assert open_ops.needs_key(path)
    assert not open_ops.needs_key("/metrics") and closed_ops.needs_key("/metrics")
    assert closed_ops.needs_key("/stats")
    assert not open_ops.needs_key("/readyz") and closed_ops.needs_key("/health")
    assert not closed_ops.needs_key("/healthz")


def test_protection_without_a_key_source_is_a_load_error():
    with pytest.raises(
        ValueError, match="protect_metrics / protect_readyz need api_keys_env or api_keys_file"
    ):
        AuthSpec(protect_metrics=True)
