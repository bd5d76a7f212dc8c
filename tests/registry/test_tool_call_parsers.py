"""The tool-call parser table and the models.yaml override."""

from __future__ import annotations

import pytest

from serve_app.deployments.tool_parsers import SCANNERS
from serve_app.errors import RegistryError
from serve_app.registry import load_registry
from serve_app.registry.tool_call_parsers import PARSER_RULES, TOOL_CALL_PARSERS, default_parser
from tests.registry.test_loader import write


@pytest.mark.parametrize(
    ("config", "parser"),
    [
        ({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}, "hermes"),
        ({"architectures": ["Qwen3ForCausalLM"]}, "hermes"),
        ({"architectures": ["LlamaForCausalLM"]}, "llama3_json"),
        ({"architectures": ["MistralForCausalLM"]}, "mistral"),
        ({"architectures": ["GPT2LMHeadModel"]}, None),
        ({}, None),
    ],
)
def test_the_parser_follows_the_architecture(config, parser):
    assert default_parser(config) == parser


def test_every_name_in_the_table_has_a_parser():
    assert {rule.parser for rule in PARSER_RULES} <= set(TOOL_CALL_PARSERS) <= set(SCANNERS)


def test_models_yaml_may_name_a_parser(tmp_path):
    (tmp_path / "ck").mkdir()
    path = write(tmp_path, [{"name": "q", "checkpoint": "ck", "tool_call_parser": "mistral"}])
    assert load_registry(path).models[0].tool_call_parser == "mistral"


def test_an_unknown_parser_name_lists_the_valid_ones(tmp_path):
    (tmp_path / "ck").mkdir()
    path = write(tmp_path, [{"name": "q", "checkpoint": "ck", "tool_call_parser": "hermez"}])
    with pytest.raises(
        RegistryError,
        match=r"field 'tool_call_parser': Value error, unknown tool_call_parser 'hermez'; valid names "
        r"\(vLLM's\): hermes, llama3_json, mistral",
    ):
        load_registry(path)
