"""The registry's table of vLLM engine argument names (serve_app/registry/engine_arg_names.py)
against the installed vLLM: every name it sends to engine_args must be one vLLM's engine takes.
Runs where vLLM is installed (the GPU machine); vLLM is an optional extra."""

import dataclasses

import pytest

from serve_app.registry.engine_arg_names import VLLM_ENGINE_ARGS


def test_every_name_the_hint_sends_to_engine_args_is_an_async_engine_arg():
    arg_utils = pytest.importorskip("vllm.engine.arg_utils")
    fields = {field.name for field in dataclasses.fields(arg_utils.AsyncEngineArgs)}
    assert not VLLM_ENGINE_ARGS - fields, sorted(VLLM_ENGINE_ARGS - fields)
