"""vLLM 0.24's max_model_len rule (vllm/config/model.py _get_and_verify_max_len) on config dicts."""

from __future__ import annotations

import pickle

import pytest

from serve_app.engines.context_length import ContextLength, allow_long_from_env, effective_max_model_len
from serve_app.errors import MaxModelLenError, RegistryError

BASE = {"max_position_embeddings": 2048}
TOO_LONG = (
    "max_model_len 100000 is greater than the 2048 tokens this checkpoint supports "
    "(max_position_embeddings in config.json); vLLM refuses to start; set max_model_len to 2048 or less, "
    "or set VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 where the replicas run (RoPE positions past 2048 give NaN; "
    "learned positions fail out of bounds)"
)


def length(requested=None, allow_long=False, **config):
    return effective_max_model_len({**BASE, **config}, requested, allow_long=allow_long)


def test_default_is_the_checkpoints_limit():
    assert length() == ContextLength(2048, 2048, "max_position_embeddings")
    assert length(1024).value == 1024


def test_past_the_limit_fails_with_both_numbers_and_the_env_var():
    with pytest.raises(MaxModelLenError) as caught:
        length(100000)
    assert str(caught.value) == TOO_LONG
    assert caught.value.param == "max_model_len" and isinstance(caught.value, RegistryError)
    assert str(pickle.loads(pickle.dumps(caught.value))) == TOO_LONG  # crosses Ray processes


def test_the_env_var_allows_it_as_vllm_reads_it():
    allowed = length(100000, allow_long=True)
    assert allowed.value == 100000 and allowed.beyond_limit
    assert allowed.describe() == (
        "max_model_len 100000; the checkpoint allows 2048 (max_position_embeddings), "
        "exceeded because VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"
    )
    assert allow_long_from_env({"VLLM_ALLOW_LONG_MAX_MODEL_LEN": " True "})
    assert not allow_long_from_env({"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "yes"})
    assert not allow_long_from_env({})


@pytest.mark.parametrize(
    ("rope", "derived"),
    [
        ({"rope_type": "linear", "factor": 4.0}, 8192),
        ({"type": "dynamic", "factor": 2.0}, 4096),  # vLLM 0.24 scales 'dynamic' too
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}, 4096),
        ({"rope_type": "yarn", "factor": 4.0}, 8192),  # transformers fills original_ from the config
        ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 256}, 2048),
        ({"type": "su", "factor": 8.0}, 2048),  # su is longrope: max_position_embeddings already long
        ({"rope_type": "default", "rope_theta": 10000.0}, 2048),
        ({"rope_type": "linear", "factor": None}, 2048),  # a null factor falls back to 1.0
    ],
)
def test_rope_scaling(rope, derived):
    assert length(rope_scaling=rope).derived == derived
    assert length(rope_parameters=rope).derived == derived  # transformers 5's name


def test_rope_scaled_extended_length_is_allowed():
    result = length(8192, rope_scaling={"rope_type": "linear", "factor": 4.0})
    assert result.value == 8192
    assert result.describe() == (
        "max_model_len 8192; the checkpoint allows 8192 (max_position_embeddings x RoPE factor 4)"
    )
    with pytest.raises(MaxModelLenError, match=r"^max_model_len 8193 is greater than the 8192 tokens"):
        length(8193, rope_scaling={"rope_type": "linear", "factor": 4.0})


def test_rope_parameters_nested_per_layer_type():
    nested = {"full_attention": {"rope_type": "linear", "factor": 2.0}, "sliding_attention": {}}
    assert length(rope_parameters=nested).derived == 4096


def test_gemma3_is_not_scaled_again():
    rope = {"rope_type": "linear", "factor": 8.0}
    assert length(model_type="gemma3_text", rope_scaling=rope).derived == 2048


def test_longrope_defaults_to_the_original_length():
    config = {"rope_scaling": {"rope_type": "longrope"}, "original_max_position_embeddings": 512}
    assert length(**config).value == 512
    assert length(2048, **config).value == 2048


def test_smallest_key_wins_and_model_max_length_overrides():
    assert effective_max_model_len({"max_position_embeddings": 4096, "n_positions": 1024}, None).key == (
        "n_positions"
    )
    assert length(model_max_length=8192) == ContextLength(8192, 8192, "model_max_length")


def test_sliding_window_caps_only_when_disabled():
    config = {**BASE, "sliding_window": 512}
    assert effective_max_model_len(config, None).value == 2048
    assert effective_max_model_len(config, None, disable_sliding_window=True).key == "sliding_window"
    assert effective_max_model_len(config, None, disable_sliding_window=True).value == 512
    off = {**config, "use_sliding_window": False}  # Qwen2/Qwen3: the window is not used
    assert effective_max_model_len(off, None, disable_sliding_window=True).value == 2048
    zero = {**BASE, "sliding_window": 0}  # vLLM: 0 means none
    assert effective_max_model_len(zero, None, disable_sliding_window=True).value == 2048


def test_config_without_a_length_key():
    assert effective_max_model_len({}, 50000) == ContextLength(50000, None, None)
    assert effective_max_model_len({}, None).value == 2048
