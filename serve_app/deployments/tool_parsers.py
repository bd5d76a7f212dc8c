"""Tool calls in model output, parsed in the model server so both engines behave the same.

Formats (vLLM's parser names, vllm/tool_parsers/*_tool_parser.py):

- ``hermes`` (hermes_tool_parser.py, Qwen2.5/Qwen3): ``text<tool_call>{"name": n, "arguments":
  {...}}</tool_call>...``; content is the text before the first ``<tool_call>``.
- ``llama3_json`` (llama_tool_parser.py, Llama 3.1+): the whole output is ``{"name": n,
  "parameters"|"arguments": {...}}``, several joined by ``;``, optionally after
  ``<|python_tag|>``; content is null.
- ``mistral`` (mistral_tool_parser.py): ``text[TOOL_CALLS][{"name": n, "arguments": {...}}, ...]``
  (tokenizers before v11) or ``text[TOOL_CALLS]n{...}[TOOL_CALLS]n{...}`` (v11 and later, an
  optional ``[ARGS]`` between name and arguments).
- ``required`` (vLLM's tool_choice "required", serving.py / parser/abstract_parser.py): the
  structured-decoding output ``[{"name": n, "parameters": {...}}, ...]``.
- named function (``NamedCallStream``): the whole output is the arguments object.

A call's ``arguments`` is the model's own JSON text of the arguments object (stripped), checked
to parse as an object. vLLM does the same for a named function; for the other formats it
re-serialises with ``json.dumps``, whose streamed pieces then need not join to the non-streamed
string. Keeping the model's text makes streamed pieces join to exactly the non-streamed value.

Output that is not a well-formed call sequence in the model's format is plain content (under
``auto``), never an error. ``parse`` is the non-streamed parser; ``CallStream`` feeds the same
scanner the growing text and sends only what is new.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

INCOMPLETE = -1  # the text ends before the item does: wait for more
BAD = -2  # the text is not what the format allows here
_WS = " \t\r\n"


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: ``arguments`` is the JSON text of an object."""

    name: str
    arguments: str


@dataclass
class PartialCall:
    name: str
    arguments: str  # the arguments text so far; grows while the model writes it
    done: bool = False


@dataclass
class Scan:
    """What a format's scanner found in the text so far.

    ``content``: text outside calls that can be shown (streaming holds back a possible marker);
    ``calls``: calls whose name is known; ``bad``: the text is not a call sequence of this format.
    """

    content: str = ""
    calls: list[PartialCall] = field(default_factory=list)
    bad: bool = False
    finished: bool = False  # every call is complete and nothing may follow


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# --- JSON pieces ---------------------------------------------------------------------------


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _string_end(text: str, i: int) -> int:
    """End (after the closing quote) of the JSON string starting at ``i``."""
    if i >= len(text):
        return INCOMPLETE
    if text[i] != '"':
        return BAD
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == '"':
            return j + 1
        j += 1
    return INCOMPLETE


def _object_end(text: str, i: int) -> int:
    """End of the JSON object starting at ``i`` (brackets balanced outside strings)."""
    if i >= len(text):
        return INCOMPLETE
    if text[i] != "{":
        return BAD
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == '"':
            j = _string_end(text, j)
            if j < 0:
                return j
            continue
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return INCOMPLETE


def _expect(text: str, i: int, literal: str) -> int:
    """Index after ``literal`` at ``i`` (whitespace first), INCOMPLETE or BAD."""
    i = _skip_ws(text, i)
    piece = text[i : i + len(literal)]
    if piece == literal:
        return i + len(literal)
    return INCOMPLETE if literal.startswith(piece) and i + len(piece) == len(text) else BAD


def _key(text: str, i: int, allowed: tuple[str, ...]) -> tuple[str | None, int]:
    """A JSON object key from ``allowed`` and the index after its colon."""
    i = _skip_ws(text, i)
    end = _string_end(text, i)
    if end < 0:
        return None, end
    key = _json_string(text[i:end])
    if key is None or key not in allowed:
        return None, BAD
    return key, _expect(text, end, ":")


def _call_object(text: str, i: int, args_keys: tuple[str, ...]) -> tuple[PartialCall | None, int]:
    """``{"name": n, "<args key>": {...}}`` at ``i``: (the call so far, index after it).

    The index is INCOMPLETE while the call is unfinished (the call, once its name is known, is
    returned with the arguments text so far) and BAD when the text breaks the shape."""
    j = _expect(text, i, "{")
    if j < 0:
        return None, j
    _, j = _key(text, j, ("name",))
    if j < 0:
        return None, j
    j = _skip_ws(text, j)
    name_end = _string_end(text, j)
    if name_end < 0:
        return None, name_end
    name = _json_string(text[j:name_end])
    if name is None:
        return None, BAD
    j = _expect(text, name_end, ",")
    if j >= 0:
        _, j = _key(text, j, args_keys)
    if j < 0:
        return None, j
    start = _skip_ws(text, j)
    end = _object_end(text, start)
    if end == BAD:
        return None, BAD
    call = PartialCall(name, text[start : len(text) if end < 0 else end])
    if end < 0:
        return call, INCOMPLETE
    close = _expect(text, end, "}")
    if close >= 0:
        call.done = True
    return call, close


def _held_back(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that could begin ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


# --- formats -------------------------------------------------------------------------------


def scan_hermes(text: str) -> Scan:
    start_tag, end_tag = "<tool_call>", "</tool_call>"
    first = text.find(start_tag)
    if first < 0:
        return Scan(content=text[: len(text) - _held_back(text, start_tag)])
    scan = Scan(content=text[:first])
    i = first
    while True:
        call, j = _call_object(text, i + len(start_tag), ("arguments",))
        if call is not None:
            scan.calls.append(call)
        if j < 0:
            scan.bad = j == BAD
            return scan
        j = _expect(text, j, end_tag)
        if j == BAD:
            scan.bad = True
        if j < 0:
            return scan
        i = text.find(start_tag, j)
        if i < 0:
            scan.finished = True
            return scan


def scan_llama3_json(text: str) -> Scan:
    i = _skip_ws(text, 0)
    tag = "<|python_tag|>"
    if text.startswith(tag, i):
        i = _skip_ws(text, i + len(tag))
    elif tag.startswith(text[i:]):
        return Scan()  # not yet known whether this is a call
    if i == len(text):
        return Scan()
    if not text.startswith("{", i):
        return Scan(content=text, bad=True)
    scan = Scan()
    while True:
        call, j = _call_object(text, i, ("parameters", "arguments"))
        if call is not None:
            scan.calls.append(call)
        if j < 0:
            scan.bad = j == BAD
            return scan
        i = _skip_ws(text, j)
        if i == len(text):
            scan.finished = True
            return scan
        if text[i] != ";":
            scan.bad = True
            return scan
        i += 1


def _scan_json_array(text: str, i: int, args_key: str, scan: Scan) -> Scan:
    """``[call, call, ...]`` at ``i`` (mistral before v11, and tool_choice "required")."""
    i = _expect(text, i, "[")
    while i >= 0:
        call, i = _call_object(text, i, (args_key,))
        if call is not None:
            scan.calls.append(call)
        if i < 0:
            break
        i = _skip_ws(text, i)
        if text.startswith("]", i):
            scan.finished = _skip_ws(text, i + 1) == len(text)
            scan.bad = not scan.finished
            return scan
        i = _expect(text, i, ",")
    scan.bad = i == BAD
    return scan


def scan_mistral(text: str) -> Scan:
    tag = "[TOOL_CALLS]"
    first = text.find(tag)
    if first < 0:
        return Scan(content=text[: len(text) - _held_back(text, tag)])
    scan = Scan(content=text[:first])
    i = _skip_ws(text, first + len(tag))
    if text.startswith("[", i) or i == len(text):
        return _scan_json_array(text, i, "arguments", scan)
    for raw in text[first + len(tag) :].split(tag):  # v11: name{args}, name[ARGS]{args}
        brace = raw.find("{")
        if brace < 0:
            scan.bad = bool(raw.strip()) and not raw.strip().isidentifier()
            return scan
        name = raw[:brace].replace("[ARGS]", "").strip()
        end = _object_end(raw, brace)
        call = PartialCall(name, raw[brace : len(raw) if end < 0 else end], done=end >= 0)
        scan.calls.append(call)
        if end < 0 or raw[end:].strip():
            scan.bad = end == BAD or end >= 0
            return scan
    scan.finished = True
    return scan


def scan_required(text: str) -> Scan:
    return _scan_json_array(text, 0, "parameters", Scan())


SCANNERS = {
    "hermes": scan_hermes,
    "llama3_json": scan_llama3_json,
    "mistral": scan_mistral,
    "required": scan_required,
}


# --- whole outputs -------------------------------------------------------------------------


def parse(text: str, parser: str) -> tuple[str | None, list[ToolCall]] | None:
    """(content or None, calls) of a finished output; None when it holds no well-formed calls.

    Every call's arguments must parse as a JSON object (otherwise the output is plain content)."""
    scan = SCANNERS[parser](text)
    if not _well_formed(scan):
        return None
    return scan.content or None, [ToolCall(call.name, call.arguments) for call in scan.calls]


def _well_formed(scan: Scan) -> bool:
    """Calls, every one complete and named, with arguments that parse as a JSON object."""
    if scan.bad or not scan.calls:
        return False
    for call in scan.calls:
        if not (call.done and call.name):
            return False
        try:
            if not isinstance(json.loads(call.arguments), dict):
                return False
        except (ValueError, RecursionError):  # RecursionError: nested past Python's stack
            return False
    return True


def _json_string(literal: str) -> str | None:
    """A JSON string literal's value; None when it does not decode (an invalid escape such as
    ``\\q``) or decodes to text that is not UTF-8 (a lone surrogate such as ``\\ud800``), which
    then cannot be a call's name and the output stays content."""
    try:
        value = json.loads(literal)
        value.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return None
    return value if isinstance(value, str) else None


def parse_choice(
    text: str, finish_reason: str, request: Any, parser: str | None
) -> tuple[str | None, list[ToolCall], str]:
    """(content, calls, finish_reason) of a finished non-streamed choice of a tool request.

    vLLM's rules (chat_completion/serving.py ``chat_completion_full_generator``): a named
    function's call is the whole output and keeps the engine's finish reason (OpenAI's
    ``stop``); ``required`` parses the JSON array and says ``tool_calls`` when the engine
    stopped; ``auto`` says ``tool_calls`` when calls were parsed. Output that does not parse
    (a truncated array, no calls under auto) is returned as content. ``parallel_tool_calls:
    false`` keeps the first call only."""
    if request.tool_choice == "function":
        return None, [ToolCall(request.tool_name, text)], finish_reason
    parsed = parse(text, "required" if request.tool_choice == "required" else str(parser))
    if parsed is None:
        return text, [], finish_reason
    content, calls = parsed
    if not request.parallel_tool_calls:
        calls = calls[:1]
    if request.tool_choice == "required":
        return None, calls, "tool_calls" if finish_reason == "stop" else finish_reason
    return content, calls, "tool_calls"


def call_stream(request: Any, parser: str | None) -> CallStream | NamedCallStream:
    """The streaming counterpart of ``parse_choice`` for one choice."""
    if request.tool_choice == "function":
        return NamedCallStream(request.tool_name)
    fmt = "required" if request.tool_choice == "required" else str(parser)
    return CallStream(fmt, single=not request.parallel_tool_calls)


def stream_finish_reason(stream: CallStream | NamedCallStream, request: Any, finish_reason: str) -> str:
    """vLLM's streamed rule: ``tool_calls`` once a call was sent, except for a named function."""
    if request.tool_choice != "function" and stream.called:
        return "tool_calls"
    return finish_reason


# --- streams -------------------------------------------------------------------------------


class CallStream:
    """One streamed choice's tool calls: ``feed`` each delta's text, get what to send.

    Returns (content piece, ``delta.tool_calls`` pieces). A call's first piece carries its
    ``index``, ``id``, ``type`` and ``function.name``; later ones ``index`` and the next piece of
    ``function.arguments``. ``single``: send only call 0 (``parallel_tool_calls: false``).
    At the end, text held back or never recognised as calls is sent as content, unless a call
    was already sent.
    """

    def __init__(self, parser: str, single: bool = False) -> None:
        self.scanner = SCANNERS[parser]
        self.single = single
        self.text = ""
        self.content_sent = 0
        self.args_sent: list[int] = []
        self.ids: list[str] = []

    @property
    def called(self) -> bool:
        return bool(self.ids)

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[dict[str, Any]]]:
        self.text += delta
        scan = self.scanner(self.text)
        content, calls = scan.content, scan.calls
        if final and not self.called and not _well_formed(scan):
            content, calls = self.text, []  # not calls after all: all of it is content
        piece = content[self.content_sent :]
        self.content_sent = max(self.content_sent, len(content))
        calls = calls[:1] if self.single else calls
        return piece, [p for i, call in enumerate(calls) if (p := self._piece(i, call)) is not None]

    def _piece(self, index: int, call: PartialCall) -> dict[str, Any] | None:
        if index == len(self.ids):
            self.ids.append(new_call_id())
            self.args_sent.append(len(call.arguments))
            function = {"name": call.name, "arguments": call.arguments}
            return {"index": index, "id": self.ids[index], "type": "function", "function": function}
        new = call.arguments[self.args_sent[index] :]
        if not new:
            return None
        self.args_sent[index] = len(call.arguments)
        return {"index": index, "function": {"arguments": new}}


class NamedCallStream:
    """``tool_choice`` naming a function: the output is that call's arguments (vLLM's rule)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.id = new_call_id()
        self.started = False

    called = True

    def feed(self, delta: str, final: bool = False) -> tuple[str, list[dict[str, Any]]]:
        if not self.started:
            self.started = True
            function = {"name": self.name, "arguments": delta}
            return "", [{"index": 0, "id": self.id, "type": "function", "function": function}]
        return "", [{"index": 0, "function": {"arguments": delta}}] if delta else []
