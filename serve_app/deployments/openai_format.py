"""OpenAI response bodies, built where the tokens are (in the model server).

The router relays the ready-made server-sent-event text without parsing it: every streamed chunk
crosses a Ray hop, so it should be produced once, as one string, in its final form. The
per-request constant part of each chunk is rendered once per choice; only the text, finish
reason and (when asked for) logprobs vary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from serve_app.deployments.logprobs import (
    CompletionLogprobs,
    Position,
    TokenStrings,
    chat_logprobs,
    vllm_prompt_logprobs,
)
from serve_app.deployments.requests import InferenceRequest
from serve_app.deployments.tool_parsers import ToolCall, new_call_id
from serve_app.engines.protocol import TokenLogprob

DONE = "data: [DONE]\n\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class ChoiceResult:
    """One finished choice of a non-streamed response. ``positions`` is None without logprobs.

    ``tool_calls`` (chat with tools): the parsed calls; ``text`` is then the content or None."""

    index: int
    text: str | None
    finish_reason: str | None
    positions: list[Position] | None = None
    tool_calls: list[ToolCall] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # vLLM's field, when asked for


class ResponseFormatter:
    """Formats one request's chunks and final body (chat.completion or text_completion).

    ``strings`` renders token strings for logprobs; needed only when the request asked for them.
    """

    def __init__(self, request: InferenceRequest, prompt_tokens: int, strings: TokenStrings | None = None):
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.chat = request.kind == "chat"
        self.strings = strings
        chunk_object = "chat.completion.chunk" if self.chat else "text_completion"
        head = _dumps(
            {
                "id": self.response_id,
                "object": chunk_object,
                "created": request.created,
                "model": request.model,
            }
        )
        self._head = head[:-1] + ","
        self._choice_heads: dict[int, str] = {}
        self._sent_role: set[int] = set()
        self._completion_logprobs: dict[int, CompletionLogprobs] = {}

    @property
    def response_id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.request.request_id

    def _choice_head(self, index: int) -> str:
        head = self._choice_heads.get(index)
        if head is None:
            head = self._choice_heads[index] = f'data: {self._head}"choices":[{{"index":{index},'
        return head

    def chunk(
        self, text: str, finish_reason: str | None, index: int = 0, positions: list[Position] | None = None
    ) -> str:
        """One SSE event carrying ``text`` (possibly several engine deltas joined) for one choice."""
        logprobs = "null" if positions is None else _dumps(self._logprobs(index, positions))
        tail = f',"logprobs":{logprobs},"finish_reason":{_dumps(finish_reason)}}}]}}\n\n'
        if self.chat:
            delta: dict[str, str] = {"content": text} if text or not finish_reason else {}
            if index not in self._sent_role:
                delta = {"role": "assistant", **delta}
                self._sent_role.add(index)
            return f'{self._choice_head(index)}"delta":{_dumps(delta)}{tail}'
        return f'{self._choice_head(index)}"text":{_dumps(text)}{tail}'

    def tool_chunk(
        self,
        content: str,
        tool_calls: list[dict[str, Any]],
        finish_reason: str | None,
        index: int = 0,
        positions: list[Position] | None = None,
    ) -> str:
        """A chat chunk of a request with tools: ``delta.content`` and/or ``delta.tool_calls``
        (pieces from tool_parsers.CallStream). Empty string when there is nothing to send."""
        delta: dict[str, Any] = {}
        if content:
            delta["content"] = content
        if tool_calls:
            delta["tool_calls"] = tool_calls
        if index not in self._sent_role:
            delta = {"role": "assistant", **delta}
            self._sent_role.add(index)
        elif not delta and finish_reason is None and not positions:
            return ""
        logprobs = "null" if positions is None else _dumps(self._logprobs(index, positions))
        tail = f',"logprobs":{logprobs},"finish_reason":{_dumps(finish_reason)}}}]}}\n\n'
        return f'{self._choice_head(index)}"delta":{_dumps(delta)}{tail}'

    def _logprobs(self, index: int, positions: list[Position]) -> dict[str, Any]:
        if self.strings is None:
            raise ValueError("logprobs need the formatter's token strings")
        if self.chat:
            return {
                "content": chat_logprobs([item for _, item in positions if item is not None], self.strings)
            }
        renderer = self._completion_logprobs.get(index)
        if renderer is None:
            renderer = self._completion_logprobs[index] = CompletionLogprobs(self.strings)
        return renderer.render(positions)

    def usage_chunk(self, completion_tokens: int) -> str:
        return f'data: {self._head}"choices":[],"usage":{_dumps(self.usage(completion_tokens))}}}\n\n'

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def full_response(self, choices: list[ChoiceResult], completion_tokens: int) -> dict[str, Any]:
        """The whole body; ``choices`` in any order (they are sorted by index)."""
        rendered = []
        choices = sorted(choices, key=lambda c: c.index)
        for choice in choices:
            logprobs = None if choice.positions is None else self._logprobs(choice.index, choice.positions)
            if self.chat:
                rendered.append(
                    {
                        "index": choice.index,
                        "message": _message(choice),
                        "logprobs": logprobs,
                        "finish_reason": choice.finish_reason,
                    }
                )
            else:
                rendered.append(
                    {
                        "index": choice.index,
                        "text": choice.text,
                        "logprobs": logprobs,
                        "finish_reason": choice.finish_reason,
                    }
                )
                if self.request.sampling.prompt_logprobs is not None:
                    rendered[-1]["prompt_logprobs"] = self._prompt_logprobs(choice)
        body: dict[str, Any] = {
            "id": self.response_id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.request.created,
            "model": self.request.model,
            "choices": rendered,
            "usage": self.usage(completion_tokens),
        }
        if self.chat and self.request.sampling.prompt_logprobs is not None and choices:
            body["prompt_logprobs"] = self._prompt_logprobs(choices[0])
        return body

    def _prompt_logprobs(self, choice: ChoiceResult) -> list[dict[str, Any] | None] | None:
        if choice.prompt_logprobs is None or self.strings is None:
            return None
        return vllm_prompt_logprobs(choice.prompt_logprobs, self.strings)


def _message(choice: ChoiceResult) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.text}
    if choice.tool_calls:
        message["tool_calls"] = [
            {
                "id": new_call_id(),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in choice.tool_calls
        ]
    return message
