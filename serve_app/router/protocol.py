"""OpenAI request bodies, ordered as in the OpenAI API reference, and their conversion.

Fields we do not implement are rejected when set to something other than their default (so a
client never silently gets different behaviour), and unknown fields are ignored with a log line.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.deployments.requests import InferenceRequest
from serve_app.engines.protocol import SamplingOptions
from serve_app.errors import InvalidRequestError

logger = logging.getLogger("ray.serve")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def as_template_input(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            kinds = {part.type for part in content} - {"text"}
            if kinds:
                raise InvalidRequestError(
                    f"content parts of type {sorted(kinds)} are not supported; send text parts only",
                    param="messages",
                )
            content = "".join(part.text or "" for part in content)
        return {"role": self.role, "content": content or ""}


class _SamplingFields(BaseModel):
    """Fields shared by chat and completions (OpenAI order), then our extensions."""

    model_config = ConfigDict(extra="allow")

    model: str
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = 1
    presence_penalty: float | None = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=1.0, ge=0, le=2)
    top_p: float | None = Field(default=1.0, gt=0, le=1)
    user: str | None = None
    # --- extensions (vLLM names) ---
    ignore_eos: bool = False

    @model_validator(mode="after")
    def unsupported_fields_keep_defaults(self) -> _SamplingFields:
        if self.n not in (None, 1):
            raise ValueError("n: only n=1 is supported; send several requests instead")
        if self.logprobs not in (None, False, 0):
            raise ValueError("logprobs: log probabilities are not supported by this server")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by this server")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise ValueError(f"{name} is not supported by this server; leave it at 0")
        return self

    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})

    def sampling(self, max_tokens_default: int) -> SamplingOptions:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingOptions(
            max_tokens=self.max_tokens or max_tokens_default,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=stop,
            ignore_eos=self.ignore_eos,
        )

    def _common(self) -> dict[str, Any]:
        if self.ignored_fields():
            logger.info("ignoring unsupported request fields: %s", ", ".join(self.ignored_fields()))
        now = time.time()
        return {
            "request_id": uuid.uuid4().hex,
            "model": self.model,
            "created": int(now),
            "received_at": now,
            "sampling": self.sampling(max_tokens_default=16 if self.max_tokens is None else self.max_tokens),
            "max_tokens_given": self.max_tokens is not None,
            "stream": self.stream,
            "include_usage": bool(self.stream_options and self.stream_options.include_usage),
        }


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: str | None = None  # vLLM's field; 400 unless the model allows request templates

    def to_inference(self) -> InferenceRequest:
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return InferenceRequest(
            kind="chat",
            messages=[message.as_template_input() for message in self.messages],
            chat_template_kwargs=dict(self.chat_template_kwargs or {}),
            chat_template=self.chat_template,
            **self._common(),
        )


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str]
    echo: bool = False
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's completions default

    def to_inference(self) -> InferenceRequest:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise InvalidRequestError(
                    "batched prompts are not supported; send one prompt", param="prompt"
                )
            prompt = prompt[0]
        if isinstance(prompt, list) and not prompt:
            raise InvalidRequestError("prompt is empty", param="prompt")
        return InferenceRequest(kind="completion", prompt=prompt, echo=self.echo, **self._common())
