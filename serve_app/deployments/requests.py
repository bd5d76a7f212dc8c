"""The request a router hands a model server: plain values, cheap to pickle across the Ray hop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from serve_app.engines.protocol import SamplingOptions


@dataclass(frozen=True)
class InferenceRequest:
    kind: Literal["chat", "completion"]
    request_id: str
    model: str  # the id the client sent (an alias stays an alias in the response)
    created: int
    sampling: SamplingOptions
    max_tokens_given: bool  # False: fill the rest of the context window, as OpenAI does
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None  # a request's own template (only if the model allows it)
    received_at: float = 0.0  # time.time() when the router took the request; 0: unknown
