"""Structured outputs for the CPU reference engine, with xgrammar as vLLM 0.24 uses it.

Mirrors ``vllm/v1/structured_output/backend_xgrammar.py``:

- ``check_structured`` is vLLM's front-end ``validate_xgrammar_grammar``: it parses the constraint
  without the tokenizer (fast) and rejects JSON-schema features xgrammar does not enforce, raising
  InvalidRequestError(param="response_format") before a request starts.
- ``GrammarBackend`` is vLLM's ``XgrammarBackend``: one ``TokenizerInfo`` per engine (vocab_size =
  the model's logits width) and one ``GrammarCompiler`` with a cache; ``compile`` turns a
  ``StructuredOutput`` into a compiled grammar as vLLM's ``compile_grammar`` does (JSON schemas with
  ``any_whitespace=True``, vLLM's default; json_object as the schema ``{"type": "object"}``;
  choice as an EBNF alternation of the escaped strings).
- ``GrammarConstraint`` is vLLM's ``XgrammarGrammar``: a ``GrammarMatcher`` per request whose
  next-token bitmask is applied to the logits before sampling, and which accepts each sampled token.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import xgrammar as xgr

from serve_app.engines.protocol import StructuredOutput
from serve_app.engines.schema_walk import schema_nodes
from serve_app.errors import InvalidRequestError

PARAM = "response_format"
JSON_OBJECT_SCHEMA = '{"type": "object"}'  # vLLM compiles json_object as this schema
CACHE_LIMIT_BYTES = 512 * 1024 * 1024  # vLLM's VLLM_XGRAMMAR_CACHE_MB default

# String formats xgrammar's JSON-schema converter enforces (vLLM's STRING_SUPPORTED_FORMATS).
STRING_FORMATS = frozenset(
    {
        "email",
        "date",
        "time",
        "date-time",
        "duration",
        "ipv4",
        "ipv6",
        "hostname",
        "uuid",
        "uri",
        "uri-reference",
        "uri-template",
        "json-pointer",
        "relative-json-pointer",
    }
)
_ARRAY_UNSUPPORTED = ("uniqueItems", "contains", "minContains", "maxContains")
_XGRAMMAR_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: (Check failed: .*? is false: )?")


# --------------------------------------------------------------------------------- checking


def check_structured(spec: StructuredOutput) -> None:
    """Parse ``spec`` without a tokenizer; raise InvalidRequestError(param="response_format").

    The message names the problem: a value of the wrong type, invalid JSON, an unsupported
    JSON-schema feature (``unsupported_json_feature``), or xgrammar's own parse error. Source:
    vllm/v1/structured_output/backend_xgrammar.py ``validate_xgrammar_grammar``.
    """
    source = grammar_source(spec)
    with _as_request_error(spec):
        if spec.kind in ("json", "json_object"):
            xgr.Grammar.from_json_schema(source, any_whitespace=True)
        elif spec.kind == "regex":
            xgr.Grammar.from_regex(source)
        else:
            xgr.Grammar.from_ebnf(source)


def grammar_source(spec: StructuredOutput) -> str:
    """The text xgrammar compiles for ``spec``: a JSON schema, a regex or an EBNF grammar.

    Raises InvalidRequestError(param="response_format") for a value of the wrong type or empty, a
    schema that is not JSON, or one using a feature xgrammar does not support.
    """
    kind, value, param = spec.kind, spec.value, spec.param
    if kind == "json_object":
        return JSON_OBJECT_SCHEMA
    if kind == "choice":
        if not isinstance(value, tuple) or not value or not all(isinstance(c, str) for c in value):
            raise InvalidRequestError(f"{param}: choice must be a non-empty list of strings", param=param)
        return choice_grammar(value)
    if kind not in ("json", "regex", "grammar"):
        raise InvalidRequestError(f"{param}: unknown structured output kind {kind!r}", param=param)
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{param}: the {kind} must be a non-empty string", param=param)
    if kind == "regex" and "\x00" in value:  # vLLM refuses it before xgrammar's native parser
        raise InvalidRequestError(f"{param}: the regex must not contain a NUL character", param=param)
    if kind == "json":
        _check_schema(value, param)
    return value


def _check_schema(value: str, param: str = PARAM) -> None:
    try:
        schema = json.loads(value)
    except json.JSONDecodeError as error:
        raise InvalidRequestError(
            f"{param}: the JSON schema is not valid JSON: {error}", param=param
        ) from None
    if not isinstance(schema, dict | bool):
        raise InvalidRequestError(f"{param}: the JSON schema must be an object", param=param)
    try:
        feature = unsupported_json_feature(schema)
    except InvalidRequestError as error:  # nested past the walk's limit
        raise InvalidRequestError(f"{param}: {error.message}", param=param) from None
    if feature:
        raise InvalidRequestError(
            f"{param}: the JSON schema uses {feature}, which structured outputs (xgrammar) do not support",
            param=param,
        )


def choice_grammar(choices: Iterable[str]) -> str:
    """An EBNF grammar whose root is exactly one of ``choices`` (JSON-escaped string literals).

    vLLM's ``choice_as_grammar`` (vllm/v1/structured_output/utils.py) builds the same alternation,
    escaping quotes and backslashes; JSON escaping also covers newlines and control characters.
    """
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)


def unsupported_json_feature(schema: Any, path: str = "$") -> str | None:
    """The first JSON-schema feature xgrammar would not enforce, with where it is; None if none.

    The list is vLLM's ``has_xgrammar_unsupported_json_features``
    (vllm/v1/structured_output/backend_xgrammar.py): ``multipleOf`` on numbers; ``uniqueItems``,
    ``contains``, ``minContains``, ``maxContains`` on arrays; string formats xgrammar lacks; a
    ``pattern`` or ``format`` together with ``minLength``/``maxLength``; ``propertyNames`` beside
    ``properties``/``patternProperties``/``additionalProperties``; several ``patternProperties``
    or ``patternProperties`` beside ``properties``. Every nested object and list is searched
    (``schema_walk.schema_nodes``: InvalidRequestError past its depth limit).
    """
    for node, where in schema_nodes(schema):
        if isinstance(node, dict) and (problem := _node_problem(node)):
            return f"{problem} (at {path}{where[1:]})"
    return None


def _types(schema: dict[str, Any]) -> set[str]:
    value = schema.get("type")
    if isinstance(value, str):
        return {value}
    return {item for item in value if isinstance(item, str)} if isinstance(value, list) else set()


def _length_with_pattern(schema: Any) -> bool:
    return (
        isinstance(schema, dict)
        and ("pattern" in schema or "format" in schema)
        and ("minLength" in schema or "maxLength" in schema)
    )


def _node_problem(schema: dict[str, Any]) -> str | None:
    types = _types(schema)
    if types & {"integer", "number"} and "multipleOf" in schema:
        return '"multipleOf"'
    if "array" in types and (key := next((k for k in _ARRAY_UNSUPPORTED if k in schema), None)):
        return f'"{key}"'
    if "string" in types and "format" in schema and schema["format"] not in STRING_FORMATS:
        return f'the string format "{schema["format"]}"'
    if "string" in types and _length_with_pattern(schema):
        return '"pattern" or "format" together with "minLength"/"maxLength"'
    return _object_problem(schema) if "object" in types else None


def _object_problem(schema: dict[str, Any]) -> str | None:
    if _length_with_pattern(schema.get("propertyNames")):
        return '"propertyNames" with "pattern" or "format" and "minLength"/"maxLength"'
    if "propertyNames" in schema and (
        "properties" in schema
        or "patternProperties" in schema
        or isinstance(schema.get("additionalProperties"), dict)
        or schema.get("unevaluatedProperties", True) is not True
    ):
        return '"propertyNames" together with other property keywords'
    patterns = schema.get("patternProperties")
    if isinstance(patterns, dict) and ("properties" in schema or len(patterns) > 1):
        return 'several "patternProperties", or "patternProperties" with "properties"'
    return None


@contextlib.contextmanager
def _as_request_error(spec: StructuredOutput) -> Iterator[None]:
    """Turns xgrammar's RuntimeError into InvalidRequestError(param="response_format")."""
    try:
        yield
    except RuntimeError as error:
        what = {"json": "JSON schema", "json_object": "JSON schema"}.get(spec.kind, spec.kind)
        param = spec.param
        detail = _XGRAMMAR_PREFIX.sub("", str(error).strip()).strip()
        raise InvalidRequestError(f"{param}: invalid {what}: {detail}", param=param) from None


# --------------------------------------------------------------------------------- compiling


class GrammarBackend:
    """One engine's xgrammar tokenizer info and grammar compiler (with its cache).

    ``tokenizer`` is the Hugging Face tokenizer; ``vocab_size`` the model's logits width (its
    embedding rows, which may exceed the tokenizer's length); ``stop_token_ids`` the ids that end a
    completed grammar (the engine's EOS ids). Building the TokenizerInfo walks the vocabulary:
    call it once, in a worker thread. ``compile`` is thread-safe (vLLM compiles in a thread pool).
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> None:
        self.vocab_size = vocab_size
        stops = sorted(stop_token_ids)
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stops or None
        )
        self._compiler = xgr.GrammarCompiler(
            info, max_threads=min(8, os.cpu_count() or 1), cache_limit_bytes=CACHE_LIMIT_BYTES
        )

    def compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        """The compiled grammar for ``spec`` (cached by xgrammar for repeated specs).

        Raises InvalidRequestError(param="response_format") naming the problem. May take from
        milliseconds to seconds for large schemas and vocabularies: call it off the event loop.
        """
        source = grammar_source(spec)
        with _as_request_error(spec):
            if spec.kind in ("json", "json_object"):
                return self._compiler.compile_json_schema(source, any_whitespace=True)
            if spec.kind == "regex":
                return self._compiler.compile_regex(source)
            return self._compiler.compile_grammar(source)

    def constraint(self, compiled: xgr.CompiledGrammar) -> GrammarConstraint:
        """A fresh per-request matcher for ``compiled``."""
        return GrammarConstraint(compiled, self.vocab_size)


class GrammarConstraint:
    """One request's grammar state: masks each step's logits and accepts each sampled token.

    Not thread-safe; the engine's worker thread is its only user.
    """

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int) -> None:
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._vocab_size = vocab_size

    @property
    def terminated(self) -> bool:
        """True once the grammar is complete and a stop token was accepted: the request is done."""
        return self._matcher.is_terminated()

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf, in place.

        ``logits``: float32 CPU tensor of shape ``[vocab_size]``. Once the grammar is complete only
        its stop tokens stay allowed.
        """
        self._matcher.fill_next_token_bitmask(self._bitmask)
        xgr.apply_token_bitmask_inplace(logits, self._bitmask[0], vocab_size=self._vocab_size)

    def accept(self, token: int) -> None:
        """Advance the grammar by ``token``; raise ValueError if the grammar rejects it."""
        if not self._matcher.accept_token(token):
            raise ValueError(f"the structured-output grammar rejected token {token}")
