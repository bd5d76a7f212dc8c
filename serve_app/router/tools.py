"""Tool-calling request fields: ``tools``, ``tool_choice`` and assistant ``tool_calls``.

Shapes are OpenAI's (https://platform.openai.com/docs/api-reference/chat/create), with vLLM's
rules (vllm/entrypoints/openai/chat_completion/protocol.py ``check_tool_usage``):

- ``tools``: ``[{"type": "function", "function": {"name", "description"?, "parameters"?,
  "strict"?}}]``; ``parameters`` is a JSON schema (default: an object with no properties).
- ``tool_choice``: ``"none"``, ``"auto"`` (the default when tools are given), ``"required"`` or
  ``{"type": "function", "function": {"name": n}}``; anything but ``"none"`` needs ``tools``,
  and a named function must be one of them.
- ``"required"`` and a named function decode under a JSON schema, as vLLM's
  ``get_json_schema_from_tools`` (vllm/tool_parsers/utils.py) builds it: ``required`` an array
  (at least one item) of ``{"name": <one of the tools>, "parameters": <its schema>}`` with every
  tool's ``$defs`` hoisted to the top; a named function its own ``parameters`` schema.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.engines.protocol import StructuredOutput
from serve_app.errors import InvalidRequestError

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")  # OpenAI's rule
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Strict):
    name: str = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCallText(_Strict):
    name: str = Field(min_length=1)
    arguments: str

    @field_validator("arguments")
    @classmethod
    def arguments_are_a_json_object(cls, value: str) -> str:
        if not value.strip():
            return value  # vLLM reads an empty string as {}
        try:
            parsed = json.loads(value, parse_constant=_no_constant)
        except RecursionError:
            raise ValueError(f"is nested more than {MAX_ARGUMENT_DEPTH} levels deep") from None
        except ValueError as exc:
            raise ValueError(f"must be a JSON object encoded as a string ({exc})") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object encoded as a string")
        _check_arguments(parsed)
        return value


# The router's max_json_depth default: the arguments string is JSON inside the body's JSON, which
# the body's depth check cannot see.
MAX_ARGUMENT_DEPTH = 64


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads accepts NaN and Infinity by default


def _check_arguments(parsed: dict[str, Any]) -> None:
    """Depth at most MAX_ARGUMENT_DEPTH, and only UTF-8 text (a lone surrogate such as "\\ud800"
    decodes in Python but fails later in the tokenizer)."""
    stack: list[tuple[Any, int]] = [(parsed, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_ARGUMENT_DEPTH:
            raise ValueError(f"is nested more than {MAX_ARGUMENT_DEPTH} levels deep")
        items = list(node.items()) if isinstance(node, dict) else enumerate(node)
        for key, item in items:
            for text in (key, item):
                if isinstance(text, str):
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValueError("contains a lone surrogate; arguments must be UTF-8 text") from None
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))


class AssistantToolCall(_Strict):
    """A call in an earlier assistant message, as the API returned it."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallText

    def as_template_input(self) -> dict[str, Any]:
        """transformers' tool-use message shape: arguments as a dict (vLLM's
        ``_postprocess_messages`` in vllm/entrypoints/chat_utils.py does the same)."""
        text = self.function.arguments
        arguments = json.loads(text) if text.strip() else {}
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.function.name, "arguments": arguments},
        }


def check_tool_choice(tools: list[Tool] | None, choice: ToolChoice | None) -> None:
    """400 (param ``tool_choice``) when the choice needs tools that are not there."""
    if choice is None or choice == "none":
        return
    if not tools:
        raise InvalidRequestError(
            f"tool_choice {_describe(choice)} needs tools; send tools or leave tool_choice out",
            param="tool_choice",
        )
    if isinstance(choice, NamedToolChoice):
        names = [tool.function.name for tool in tools]
        if choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names function {choice.function.name!r}, which is not in tools "
                f"({', '.join(names)})",
                param="tool_choice",
            )


def _describe(choice: ToolChoice) -> str:
    return f"function {choice.function.name!r}" if isinstance(choice, NamedToolChoice) else repr(choice)


def tool_structured(tools: list[Tool], choice: ToolChoice, parallel: bool = True) -> StructuredOutput | None:
    """The JSON-schema constraint for ``required`` or a named function; None otherwise.

    ``parallel`` False (``parallel_tool_calls: false``) adds ``"maxItems": 1`` to the required
    array: vLLM 0.24 decodes the open-ended array and keeps the first call afterwards, so a
    model that keeps adding calls runs into max_tokens and its one call is lost with the rest."""
    if isinstance(choice, NamedToolChoice):
        tool = next(t for t in tools if t.function.name == choice.function.name)
        schema = json.dumps(tool.function.parameters or EMPTY_PARAMETERS)
        return StructuredOutput("json", schema, param="tools")
    if choice != "required":
        return None
    items, defs = [], {}
    for tool in tools:
        parameters = copy.deepcopy(tool.function.parameters or EMPTY_PARAMETERS)
        tool_defs = parameters.pop("$defs", {})
        if not isinstance(tool_defs, dict):
            raise InvalidRequestError(
                f"tools: function {tool.function.name!r}: parameters.$defs must be an object",
                param="tools",
            )
        for name, schema in tool_defs.items():
            if defs.get(name, schema) != schema:
                raise InvalidRequestError(
                    f"tools: the $defs entry {name!r} has different schemas in different tools",
                    param="tools",
                )
            defs[name] = schema
        items.append(
            {
                "properties": {
                    "name": {"type": "string", "enum": [tool.function.name]},
                    "parameters": parameters,
                },
                "required": ["name", "parameters"],
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": items}}
    if not parallel:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return StructuredOutput("json", json.dumps(schema), param="tools")
