"""Structured outputs on the CPU reference engine (engines/structured.py, xgrammar as vLLM uses it).

The tiny checkpoints have random weights, so the model's own choices are noise: what the tests
check is that the grammar holds whatever the model wants. Greedy decoding of a JSON schema can loop
on whitespace forever (vLLM's ``any_whitespace``), so JSON cases sample with seeds.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import xgrammar as xgr

from serve_app.engines.protocol import StructuredOutput
from serve_app.engines.structured import (
    GrammarBackend,
    check_structured,
    choice_grammar,
    grammar_source,
    unsupported_json_feature,
)
from serve_app.errors import InvalidRequestError
from tests.engines.cpu_helpers import collect, generate, request, run, text, tokens

# Enums, bounded integers and booleans: strings with maxLength are left out because xgrammar
# 0.2.3 lets their characters be control bytes, which a strict JSON parser refuses.
SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["color", "size", "ok"],
    "additionalProperties": False,
}
SEEDS = range(4)


def _sampled(checkpoint, structured: StructuredOutput, **changes):
    """Each seed's output, sampled at temperature 1 under ``structured`` with EOS honoured."""
    options = {"temperature": 1.0, "ignore_eos": False, "max_tokens": 300, **changes}
    requests = [request(f"s{seed}", seed=seed, structured=structured, **options) for seed in SEEDS]
    return generate(checkpoint, *requests)


def test_json_schema_output_validates(qwen2_checkpoint):
    runs = _sampled(qwen2_checkpoint, StructuredOutput("json", json.dumps(SCHEMA)))
    for deltas in runs:
        assert deltas[-1].finish_reason == "stop"
        jsonschema.validate(json.loads(text(deltas)), SCHEMA)
    assert len({text(deltas) for deltas in runs}) > 1


def test_json_schema_holds_on_llama_too(llama_checkpoint):
    (deltas,) = generate(
        llama_checkpoint,
        request(
            temperature=1.0,
            seed=0,
            ignore_eos=False,
            max_tokens=300,
            structured=StructuredOutput("json", json.dumps(SCHEMA)),
        ),
    )
    assert deltas[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text(deltas)), SCHEMA)


def test_json_object_output_is_an_object(qwen2_checkpoint):
    for deltas in _sampled(qwen2_checkpoint, StructuredOutput("json_object"), max_tokens=60, top_k=20):
        if deltas[-1].finish_reason == "stop":
            assert isinstance(json.loads(text(deltas)), dict)
        else:  # cut by max_tokens: still the start of an object
            assert text(deltas).startswith("{")


def test_regex_output_matches(qwen2_checkpoint):
    pattern = r"[a-c]{3}-\d{2}( ok)?"
    runs = [
        *_sampled(qwen2_checkpoint, StructuredOutput("regex", pattern)),
        *generate(qwen2_checkpoint, request(ignore_eos=False, structured=StructuredOutput("regex", pattern))),
    ]
    for deltas in runs:
        assert deltas[-1].finish_reason == "stop"
        assert re.fullmatch(pattern, text(deltas))


def test_choice_output_is_one_of_the_choices(qwen2_checkpoint):
    choices = ("yes", "no", 'say "maybe"', "back\\slash", "two\nlines")
    runs = _sampled(qwen2_checkpoint, StructuredOutput("choice", choices))
    assert all(deltas[-1].finish_reason == "stop" and text(deltas) in choices for deltas in runs)


def test_ebnf_grammar_output_matches(qwen2_checkpoint):
    grammar = 'root ::= "x" digit digit ("," digit)*\ndigit ::= [0-9]'
    for deltas in _sampled(qwen2_checkpoint, StructuredOutput("grammar", grammar)):
        assert deltas[-1].finish_reason == "stop"
        assert re.fullmatch(r"x\d\d(,\d)*", text(deltas))


def test_completed_grammar_stops_even_with_ignore_eos(qwen2_checkpoint):
    (deltas,) = generate(qwen2_checkpoint, request(structured=StructuredOutput("choice", ("alpha", "beta"))))
    assert deltas[-1].finish_reason == "stop"
    assert text(deltas) in ("alpha", "beta")
    assert tokens(deltas)[-1] == 2  # the grammar's stop token ends it; its text is not shown


def test_structured_output_with_logprobs(qwen2_checkpoint):
    (deltas,) = generate(
        qwen2_checkpoint,
        request(ignore_eos=False, logprobs=2, structured=StructuredOutput("regex", "[0-9]{4}")),
    )
    entries = [entry for delta in deltas for entry in delta.logprobs]
    assert re.fullmatch("[0-9]{4}", text(deltas))
    assert [entry.token_id for entry in entries] == tokens(deltas)
    assert all(-50 < entry.logprob <= 0 for entry in entries)


# ------------------------------------------------------------------------------ bad requests


@pytest.mark.parametrize(
    ("structured", "message"),
    [
        (StructuredOutput("json", '{"type": "array", "uniqueItems": true}'), r'uses "uniqueItems" \(at \$\)'),
        (
            StructuredOutput(
                "json",
                json.dumps({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}),
            ),
            r'uses "multipleOf" \(at \$\.properties\.n\)',
        ),
        (
            StructuredOutput("json", '{"type": "string", "format": "credit-card"}'),
            'the string format "credit-card"',
        ),
        (StructuredOutput("json", '{"type": "strin"}'), 'invalid JSON schema: Unsupported type "strin"'),
        (StructuredOutput("json", "{not json"), "the JSON schema is not valid JSON"),
        (StructuredOutput("json", "[1, 2]"), "the JSON schema must be an object"),
        (StructuredOutput("regex", "(("), "invalid regex: Regex parsing error at position 3"),
        (StructuredOutput("regex", "a\x00b"), "the regex must not contain a NUL character"),
        (StructuredOutput("grammar", "root ::= missing"), 'invalid grammar: .*Rule "missing" is not defined'),
        (StructuredOutput("grammar", ""), "the grammar must be a non-empty string"),
        (StructuredOutput("choice", ()), "choice must be a non-empty list of strings"),
    ],
)
def test_bad_constraints_are_refused_before_the_stream_starts(qwen2_checkpoint, structured, message):
    async def scenario(engine):
        with pytest.raises(InvalidRequestError, match=f"^response_format: .*{message}") as caught:
            engine.generate(request(structured=structured))
        return caught.value.param, engine.stats().running

    assert run(qwen2_checkpoint, scenario) == ("response_format", 0)


def test_a_compile_error_surfaces_on_the_first_read(qwen2_checkpoint):
    async def scenario(engine):
        def failing(spec):
            raise InvalidRequestError("response_format: too big to compile", param="response_format")

        engine._loaded.grammars.compile = failing
        stream = engine.generate(request(structured=StructuredOutput("regex", "[a-z]+")))
        with pytest.raises(InvalidRequestError, match="too big to compile"):
            await anext(stream)
        return await collect(engine, request("after", max_tokens=2)), engine.stats()

    after, stats = run(qwen2_checkpoint, scenario)
    assert after[-1].finish_reason == "length"
    assert (stats.running, stats.waiting) == (0, 0)


# -------------------------------------------------------------------------------- the parts


def test_unsupported_json_features_name_where_they_are():
    assert unsupported_json_feature(SCHEMA) is None
    nested = {
        "type": "object",
        "properties": {"xs": {"type": "array", "items": [{"type": "array", "contains": {}}]}},
    }
    assert unsupported_json_feature(nested) == '"contains" (at $.properties.xs.items[0])'
    length = {"type": "string", "pattern": "^a+$", "maxLength": 3}
    assert (
        unsupported_json_feature(length)
        == '"pattern" or "format" together with "minLength"/"maxLength" (at $)'
    )
    assert unsupported_json_feature({"type": "string", "format": "email"}) is None
    assert unsupported_json_feature({"type": "integer", "minimum": 1}) is None


def test_json_object_is_the_object_schema_as_in_vllm():
    assert grammar_source(StructuredOutput("json_object")) == '{"type": "object"}'


def test_choice_grammar_accepts_exactly_the_choices(qwen2_checkpoint):
    from transformers import AutoTokenizer

    choices = ('say "hi"', "a\\b", "new\nline", "é")
    backend = GrammarBackend(AutoTokenizer.from_pretrained(str(qwen2_checkpoint)), 466, [2])
    compiled = backend.compile(StructuredOutput("choice", choices))
    for choice in choices:
        matcher = xgr.GrammarMatcher(compiled)
        assert matcher.accept_string(choice) and matcher.is_completed()
    assert not xgr.GrammarMatcher(compiled).accept_string("nope")
    assert choice_grammar(["a"]) == 'root ::= "a"'


def test_a_schema_nested_past_the_walks_limit_is_a_400_naming_the_field():
    deep: dict = {"type": "object"}
    for _ in range(70):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InvalidRequestError) as raised:
        check_structured(StructuredOutput("json", json.dumps(deep)))
    assert raised.value.param == "response_format"
    assert str(raised.value) == "response_format: the JSON schema is nested more than 64 levels deep"
