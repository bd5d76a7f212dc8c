"""API keys outside Ray: where keys come from, which paths need one, exact messages."""

from __future__ import annotations

import os
import re
import time

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
    with pytest.raises(RegistryError, match=r"keys.0.key: Value error, a key must be printable ASCII"):
        ApiKeys.load(AuthSpec(api_keys_file=path), environ={})
    with pytest.raises(RegistryError, match=r"no such file where the router runs"):
        ApiKeys.load(AuthSpec(api_keys_file=tmp_path / "absent.yaml"), environ={})


def test_which_paths_need_a_key():
    open_ops = ApiKeys((), protect_metrics=False, protect_readyz=False)
    closed_ops = ApiKeys((), protect_metrics=True, protect_readyz=True)
    for path in ("/v1/models", "/v1/chat/completions", "/tokenize", "/detokenize"):
        assert open_ops.needs_key(path)
    assert not open_ops.needs_key("/metrics") and closed_ops.needs_key("/metrics")
    assert open_ops.needs_key("/stats")  # it asks the models through their queues
    assert not open_ops.needs_key("/readyz") and closed_ops.needs_key("/health")
    assert not closed_ops.needs_key("/healthz")


def test_protection_without_a_key_source_is_a_load_error():
    with pytest.raises(
        ValueError, match="protect_metrics / protect_readyz need api_keys_env or api_keys_file"
    ):
        AuthSpec(protect_metrics=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [  # found by an attack run: each was accepted, or failed without naming the file
        (b"\xff\xfe", "not UTF-8 text"),
        (b"", "the file is empty; write keys: [{key: ..., models: [...]}]"),
        (b"keys: [{key: sk-valid-key-1, models: []}]", "keys.0.models: List should have at least 1 item"),
        (b"keys: [{key: '  sk-spaced-key  '}]", "a key must be printable ASCII without spaces"),
        ("keys: [{key: sk-\u043a\u043b\u044e\u0447-1}]".encode(), "a key must be printable ASCII"),
        (b"keys: [{key: sk-same-key-1}, {key: sk-same-key-1, models: [a]}]", "the same key is given more"),
    ],
)
def test_keys_file_mistakes_name_the_file_and_the_fix(tmp_path, content, message):
    path = tmp_path / "keys.yaml"
    path.write_bytes(content)
    with pytest.raises(RegistryError, match=re.escape(message)) as caught:
        ApiKeys.load(AuthSpec(api_keys_file=path), environ={})
    assert str(path) in str(caught.value) or "same key" in message


def test_environment_keys_follow_the_same_rule():
    with pytest.raises(RegistryError, match=r"KEYS: key 2 is not printable ASCII without spaces, at least 8"):
        ApiKeys.load(AuthSpec(api_keys_env="KEYS"), environ={"KEYS": "sk-good-key-1,a"})


def test_an_alias_in_the_allow_list_covers_the_model_and_its_other_ids(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"key": "sk-limited-1", "models": ["qwen2-demo"]}]}))
    key = ApiKeys.load(AuthSpec(api_keys_file=path), environ={}).authenticate("Bearer sk-limited-1")
    check_model_allowed(key, "qwen", ids=("qwen2-demo", "qwen"))
    with pytest.raises(ModelNotAllowedError):
        check_model_allowed(key, "llama", ids=("llama-demo", "llama"))


def test_a_changed_keys_file_is_read_again_and_a_broken_one_refuses_every_key(tmp_path, monkeypatch):
    from serve_app.router import auth

    monkeypatch.setattr(auth, "RELOAD_CHECK_S", 0.0)
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"key": "sk-old-key-1"}, {"key": "sk-kept-key-1"}]}))
    store = auth.KeyStore(AuthSpec(api_keys_file=path))
    store.current().authenticate("Bearer sk-old-key-1")
    path.write_text(yaml.safe_dump({"keys": [{"key": "sk-kept-key-1"}]}))
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new modification time, however fast
    with pytest.raises(AuthenticationError):
        store.current().authenticate("Bearer sk-old-key-1")
    store.current().authenticate("Bearer sk-kept-key-1")
    path.write_text("keys: [")
    os.utime(path, (time.time() + 10, time.time() + 10))
    with pytest.raises(AuthenticationError):
        store.current().authenticate("Bearer sk-kept-key-1")


def test_several_authorization_headers_are_refused():
    import asyncio

    keys = ApiKeys.load(AuthSpec(api_keys_env="KEYS"), environ={"KEYS": "sk-good-key-1"})
    sent: list[dict] = []

    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("the app ran")

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", b"Bearer wrong-key-1"), (b"authorization", b"Bearer sk-good-key-1")]
    scope = {"type": "http", "path": "/v1/models", "root_path": "", "headers": headers, "method": "GET"}
    asyncio.run(auth_middleware(app, keys)(scope, None, send))
    assert sent[0]["status"] == 401
    assert b"several Authorization headers" in sent[1]["body"]


def auth_middleware(app, keys):
    from serve_app.router.auth import ApiKeyAuth

    return ApiKeyAuth(app, keys=lambda: keys)
