"""Ready-made OpenAI bodies: what clients parse."""

from __future__ import annotations

import json

from serve_app.deployments.openai_format import DONE, ChoiceResult, ResponseFormatter
from serve_app.deployments.requests import InferenceRequest
from serve_app.engines.protocol import SamplingOptions


def request(kind: str) -> InferenceRequest:
    return InferenceRequest(
        kind=kind,
        request_id="abc",
        model="m",
        created=1,
        sampling=SamplingOptions(max_tokens=4),
        max_tokens_given=True,
        messages=[],
        prompts=("p",),
    )


def parse(event: str) -> dict:
    assert event.startswith("data: ") and event.endswith("\n\n")
    return json.loads(event[len("data: ") :])


def test_chat_chunks_carry_role_first_then_content_and_finish():
    formatter = ResponseFormatter(request("chat"), prompt_tokens=3)
    first = parse(formatter.chunk('he said "hi"\n', None))
    assert first["object"] == "chat.completion.chunk"
    assert first["id"] == "chatcmpl-abc"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": 'he said "hi"\n'}
    last = parse(formatter.chunk("", "length"))
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}


def test_usage_chunk_has_no_choices():
    formatter = ResponseFormatter(request("completion"), prompt_tokens=3)
    usage = parse(formatter.usage_chunk(4))
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert usage["object"] == "text_completion"
    assert DONE == "data: [DONE]\n\n"


def test_full_completion_body():
    body = ResponseFormatter(request("completion"), prompt_tokens=2).full_response(
        [ChoiceResult(0, "é", "stop")], 1
    )
    assert body["choices"] == [{"index": 0, "text": "é", "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"]["total_tokens"] == 3
