"""Tool-call parsers on fixed model outputs: whole (non-streamed) and fed in pieces (streamed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from serve_app.deployments.tool_parsers import CallStream, ToolCall, parse, parse_choice

WEATHER = '{"city": "Paris", "days": 2}'
TIME = '{"zone": "CET"}'

WELL_FORMED = [
    # hermes (Qwen2.5 / Qwen3)
    (
        "hermes",
        f'<tool_call>\n{{"name": "weather", "arguments": {WEATHER}}}\n</tool_call>',
        None,
        [ToolCall("weather", WEATHER)],
    ),
    (
        "hermes",
        f'Let me look.<tool_call>\n{{"name": "weather", "arguments": {WEATHER}}}\n</tool_call>\n'
        f'<tool_call>\n{{"name": "time", "arguments": {TIME}}}\n</tool_call>',
        "Let me look.",
        [ToolCall("weather", WEATHER), ToolCall("time", TIME)],
    ),
    (  # the closing tag left out at the end (vLLM's regex takes the rest)
        "hermes",
        f'<tool_call>{{"name": "time", "arguments": {TIME}}}',
        None,
        [ToolCall("time", TIME)],
    ),
    (  # braces and an escaped quote inside a string argument
        "hermes",
        '<tool_call>{"name": "echo", "arguments": {"text": "a}b{\\"c"}}</tool_call>',
        None,
        [ToolCall("echo", '{"text": "a}b{\\"c"}')],
    ),
    # llama3_json (Llama 3.1+)
    ("llama3_json", f'{{"name": "weather", "parameters": {WEATHER}}}', None, [ToolCall("weather", WEATHER)]),
    (
        "llama3_json",
        f'<|python_tag|>{{"name": "weather", "arguments": {WEATHER}}}; '
        f'{{"name": "time", "parameters": {TIME}}}',
        None,
        [ToolCall("weather", WEATHER), ToolCall("time", TIME)],
    ),
    # mistral: before v11 (a JSON array) and v11+ (name{args})
    (
        "mistral",
        f'Sure.[TOOL_CALLS][{{"name": "weather", "arguments": {WEATHER}}}, '
        f'{{"name": "time", "arguments": {TIME}}}]',
        "Sure.",
        [ToolCall("weather", WEATHER), ToolCall("time", TIME)],
    ),
    (
        "mistral",
        f"[TOOL_CALLS]weather{WEATHER}[TOOL_CALLS]time[ARGS]{TIME}",
        None,
        [ToolCall("weather", WEATHER), ToolCall("time", TIME)],
    ),
    # tool_choice "required": the structured-decoding array
    (
        "required",
        f'[ {{"name": "weather", "parameters": {WEATHER}}},\n{{"name":"time","parameters":{TIME}}} ]',
        None,
        [ToolCall("weather", WEATHER), ToolCall("time", TIME)],
    ),
]

MALFORMED = [
    ("hermes", "just words, no calls"),
    ("hermes", '<tool_call>{"name": "weather", "arguments": {"city": "Par'),  # cut off
    ("hermes", '<tool_call>{"arguments": {}, "name": "weather"}</tool_call>'),  # name not first
    ("hermes", '<tool_call>{"name": "weather", "arguments": [1, 2]}</tool_call>'),  # not an object
    ("hermes", '<tool_call>{"name": "weather", "arguments": {"a": 1,}}</tool_call>'),  # not JSON
    ("llama3_json", "The weather is nice."),
    ("llama3_json", '{"name": "weather"}'),  # no arguments
    ("llama3_json", '{"name": "weather", "parameters": {}} and then words'),
    ("mistral", "[TOOL_CALLS][{"),
    ("required", '[{"name": "weather", "parameters": {"city": "Paris"'),
    ("required", "[]"),
    # Names or keys that are not valid JSON strings, or not UTF-8 once decoded: output the model
    # can emit, returned as content, never an error (found by an attack run).
    ("hermes", '<tool_call>\n{"name": "\\q", "arguments": {}}\n</tool_call>'),
    ("hermes", '<tool_call>\n{"name": "\\ud800", "arguments": {}}\n</tool_call>'),
    ("llama3_json", '{"name": "\\u12", "parameters": {}}'),
    ("hermes", '<tool_call>\n{"na\\qme": "f", "arguments": {}}\n</tool_call>'),
    (
        "hermes",
        '<tool_call>\n{"name": "f", "arguments": {"a": ' + "[" * 5000 + "]" * 5000 + "}}\n</tool_call>",
    ),
]


@pytest.mark.parametrize(("parser", "text", "content", "calls"), WELL_FORMED)
def test_well_formed_output_parses_to_calls(parser, text, content, calls):
    assert parse(text, parser) == (content, calls)
    for call in calls:
        assert isinstance(json.loads(call.arguments), dict)


@pytest.mark.parametrize(("parser", "text"), MALFORMED)
def test_malformed_output_is_no_calls(parser, text):
    assert parse(text, parser) is None


def feed_in_pieces(parser: str, text: str, size: int) -> tuple[str, dict[int, dict]]:
    stream = CallStream(parser)
    content, calls = "", {}
    pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
    for n, piece in enumerate(pieces):
        text_piece, tool_pieces = stream.feed(piece, final=n == len(pieces) - 1)
        content += text_piece
        for item in tool_pieces:
            if item["index"] not in calls:
                assert set(item) == {"index", "id", "type", "function"}
                assert item["id"].startswith("call_") and item["type"] == "function"
                calls[item["index"]] = {"name": item["function"]["name"], "arguments": ""}
            else:
                assert set(item) == {"index", "function"} and set(item["function"]) == {"arguments"}
            calls[item["index"]]["arguments"] += item["function"]["arguments"]
    return content, calls


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
@pytest.mark.parametrize(("parser", "text", "content", "calls"), WELL_FORMED)
def test_streamed_pieces_join_to_the_non_streamed_calls(parser, text, content, calls, size):
    streamed_content, streamed = feed_in_pieces(parser, text, size)
    assert streamed_content == (content or "")
    assert [ToolCall(c["name"], c["arguments"]) for _, c in sorted(streamed.items())] == calls


@pytest.mark.parametrize("size", [1, 4, 1000])
@pytest.mark.parametrize(
    ("parser", "text"),
    [
        (p, t)
        for p, t in MALFORMED
        if p != "required" and not t.startswith(("<tool_call>", "[TOOL", '{"name"'))
    ],
)
def test_streamed_text_that_is_not_a_call_comes_back_as_content(parser, text, size):
    assert feed_in_pieces(parser, text, size) == (text, {})


def test_streamed_text_holds_back_only_what_may_start_a_call():
    stream = CallStream("hermes")
    assert stream.feed("Hello <tool") == ("Hello ", [])
    assert stream.feed("box>") == ("<toolbox>", [])
    assert stream.feed(" <", final=True) == (" <", [])


def test_parallel_tool_calls_false_streams_only_the_first_call():
    text = WELL_FORMED[1][1]
    stream = CallStream("hermes", single=True)
    _, pieces = stream.feed(text, final=True)
    assert [p["function"]["name"] for p in pieces] == ["weather"]


def request(tool_choice: str, parallel: bool = True, name: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(tool_choice=tool_choice, tool_name=name, parallel_tool_calls=parallel)


def test_finish_reasons_follow_vllm():
    two_calls = WELL_FORMED[1][1]
    assert parse_choice(two_calls, "stop", request("auto"), "hermes")[2] == "tool_calls"
    assert len(parse_choice(two_calls, "stop", request("auto", parallel=False), "hermes")[1]) == 1
    assert parse_choice("words", "length", request("auto"), "hermes") == ("words", [], "length")
    array = f'[{{"name": "weather", "parameters": {WEATHER}}}]'
    assert parse_choice(array, "stop", request("required"), None) == (
        None,
        [ToolCall("weather", WEATHER)],
        "tool_calls",
    )
    cut = '[{"name": "weather", "param'
    assert parse_choice(cut, "length", request("required"), None) == (cut, [], "length")
    assert parse_choice(WEATHER, "stop", request("function", name="weather"), None) == (
        None,
        [ToolCall("weather", WEATHER)],
        "stop",  # OpenAI's (and vLLM's) finish reason for a named function
    )
