"""OpenAI response bodies, built where the tokens are (in the model server).

The router relays the ready-made server-sent-event text without parsing it: every streamed chunk
crosses a Ray hop, so it should be produced once, as one string, in its final form. The
per-request constant part of each chunk is rendered once; only the text and finish reason vary.
"""

from __future__ import annotations

import json
from typing import Any

from serve_app.deployments.requests import InferenceRequest

DONE = "data: [DONE]\n\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class ResponseFormatter:
    """Formats one request's chunks and final body (chat.completion or text_completion)."""

    def __init__(self, request: InferenceRequest, prompt_tokens: int) -> None:
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.chat = request.kind == "chat"
        chunk_object = "chat.completion.chunk" if self.chat else "text_completion"
        head = _dumps(
            {
                "id": self.response_id,
                "object": chunk_object,
                "created": request.created,
                "model": request.model,
            }
        )
        self._chunk_head = head[:-1] + ',"choices":[{"index":0,'
        self._sent_role = False

    @property
    def response_id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.request.request_id

    def chunk(self, text: str, finish_reason: str | None) -> str:
        """One SSE event carrying ``text`` (possibly several engine deltas joined)."""
        if self.chat:
            delta: dict[str, str] = {"content": text} if text or not finish_reason else {}
            if not self._sent_role:
                delta = {"role": "assistant", **delta}
                self._sent_role = True
            body = f'"delta":{_dumps(delta)},"logprobs":null,"finish_reason":{_dumps(finish_reason)}}}]}}'
        else:
            body = f'"text":{_dumps(text)},"logprobs":null,"finish_reason":{_dumps(finish_reason)}}}]}}'
        return f"data: {self._chunk_head}{body}\n\n"

    def usage_chunk(self, completion_tokens: int) -> str:
        head = self._chunk_head[: -len('"choices":[{"index":0,')]
        return f'data: {head}"choices":[],"usage":{_dumps(self.usage(completion_tokens))}}}\n\n'

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def full_response(self, text: str, finish_reason: str | None, completion_tokens: int) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {
            "id": self.response_id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.request.created,
            "model": self.request.model,
            "choices": [choice],
            "usage": self.usage(completion_tokens),
        }
