"""Which tool-call output format a model writes: one table of data, keyed by architecture.

A row maps a ``config.json`` architecture (or ``model_type``) to a vLLM ``--tool-call-parser``
name. The model server parses tool calls out of the text with the parser of that name
(serve_app/deployments/tool_parsers.py); ``tool_call_parser:`` in models.yaml overrides the row.
A model whose architecture has no row and no override still serves ``tool_choice: "required"``
and named functions (structured decoding makes those format-free); ``"auto"`` gets 400.

Source for every row: vLLM's docs/features/tool_calling.md (the parser each family is served
with) and vllm/tool_parsers/__init__.py (the registered names).

Nothing here imports Ray, vLLM or torch: the registry validates ``tool_call_parser`` with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# vLLM parser names this server implements (vllm/tool_parsers/__init__.py registers them).
TOOL_CALL_PARSERS = ("hermes", "llama3_json", "mistral")


@dataclass(frozen=True)
class ParserRule:
    architecture: str  # config.json "architectures" entry, or its "model_type"
    parser: str
    reason: str


PARSER_RULES: tuple[ParserRule, ...] = (
    ParserRule("Qwen2ForCausalLM", "hermes", "Qwen2.5 writes <tool_call>{json}</tool_call> (Hermes format)"),
    ParserRule("Qwen2MoeForCausalLM", "hermes", "Qwen2.5 MoE: the same template as Qwen2.5"),
    ParserRule("Qwen3ForCausalLM", "hermes", "Qwen3 keeps Qwen2.5's <tool_call> format"),
    ParserRule("Qwen3MoeForCausalLM", "hermes", "Qwen3 MoE keeps Qwen2.5's <tool_call> format"),
    ParserRule("LlamaForCausalLM", "llama3_json", "Llama 3.1 and later answer with a bare JSON call"),
    ParserRule("MistralForCausalLM", "mistral", "Mistral writes [TOOL_CALLS] before its calls"),
    ParserRule("MixtralForCausalLM", "mistral", "Mixtral: Mistral's [TOOL_CALLS] format"),
)


def default_parser(config: dict[str, Any]) -> str | None:
    """The parser name for a checkpoint's ``config.json`` dict; None when no row matches."""
    keys = [*(config.get("architectures") or []), config.get("model_type")]
    for rule in PARSER_RULES:
        if rule.architecture in keys:
            return rule.parser
    return None


def check_parser_name(name: str) -> str:
    """``name`` if it is one of ``TOOL_CALL_PARSERS``; ValueError listing them otherwise."""
    if name not in TOOL_CALL_PARSERS:
        raise ValueError(
            f"unknown tool_call_parser {name!r}; valid names (vLLM's): {', '.join(TOOL_CALL_PARSERS)}"
        )
    return name
