"""Turn a request into prompt token ids with the checkpoint's own tokenizer and chat template.

Both engines get token ids from here, so the CPU engine and vLLM see identical prompts.
"""

from __future__ import annotations

from typing import Any

from serve_app.deployments.requests import InferenceRequest
from serve_app.errors import ChatTemplateMissingError, ContextLengthError, InvalidRequestError


class PromptRenderer:
    def __init__(self, tokenizer: Any, model_name: str, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))

    def token_ids(self, request: InferenceRequest) -> list[int]:
        ids = self._chat_ids(request) if request.kind == "chat" else self._completion_ids(request)
        self._check_fits(len(ids), request)
        return ids

    def _chat_ids(self, request: InferenceRequest) -> list[int]:
        if not self.has_chat_template:
            raise ChatTemplateMissingError(
                f"model {self.model_name!r} has no chat template in its tokenizer; use /v1/completions "
                "or add a chat_template to the checkpoint's tokenizer_config.json",
                param="messages",
            )
        text = self.tokenizer.apply_chat_template(
            request.messages, add_generation_prompt=True, tokenize=False, **request.chat_template_kwargs
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _completion_ids(self, request: InferenceRequest) -> list[int]:
        prompt = request.prompt
        if isinstance(prompt, list):
            vocab = len(self.tokenizer)
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise InvalidRequestError(
                    f"prompt token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})", param="prompt"
                )
            return list(prompt)
        return self.tokenizer.encode(prompt or "", add_special_tokens=True)

    def _check_fits(self, prompt_tokens: int, request: InferenceRequest) -> None:
        limit = self.max_model_len
        if prompt_tokens == 0:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if prompt_tokens >= limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input.",
                param="messages" if request.kind == "chat" else "prompt",
            )
        wanted = request.sampling.max_tokens
        if request.max_tokens_given and prompt_tokens + wanted > limit:
            raise ContextLengthError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the input, {wanted} in the "
                "completion). Please reduce the length of the input or of max_tokens.",
                param="max_tokens",
            )

    def room_for_completion(self, prompt_tokens: int) -> int:
        return self.max_model_len - prompt_tokens
