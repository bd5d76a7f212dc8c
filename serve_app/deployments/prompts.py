"""Turn a request into prompt token ids with the checkpoint's own tokenizer and chat template.

Both engines get token ids from here, so the CPU engine and vLLM see identical prompts.
Options follow vLLM's request fields (vllm/entrypoints/openai/chat_completion/protocol.py):
``add_generation_prompt``, ``continue_final_message``, ``add_special_tokens`` (chat default
False: the template adds them; completions default True) and ``truncate_prompt_tokens`` (keep
the last k tokens; -1 means the context length).
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
        self.vocab_size = len(tokenizer)
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))

    def prompt_ids(self, request: InferenceRequest) -> list[list[int]]:
        """One token-id list per prompt (chat: one), truncated as asked, each checked to fit.

        Raises ChatTemplateMissingError, InvalidRequestError (empty prompt, ids outside the
        vocabulary) or ContextLengthError (the prompt, or prompt + max_tokens, exceeds the context).
        """
        if request.kind == "chat":
            prompts = [self.chat_ids(request.messages or [], request)]
        else:
            prompts = [self.completion_ids(prompt, request.add_special_tokens) for prompt in request.prompts]
        truncate = request.truncate_prompt_tokens
        if truncate is not None:
            keep = self.max_model_len if truncate == -1 else truncate
            prompts = [ids[-keep:] for ids in prompts]
        for ids in prompts:
            self._check_fits(len(ids), request)
        return prompts

    def chat_ids(self, messages: list[dict[str, Any]], request: Any) -> list[int]:
        """The chat template applied to ``messages``; ``request`` carries the template options."""
        if not self.has_chat_template:
            raise ChatTemplateMissingError(
                f"model {self.model_name!r} has no chat template in its tokenizer; use /v1/completions "
                "or add a chat_template to the checkpoint's tokenizer_config.json",
                param="messages",
            )
        if request.continue_final_message and (not messages or messages[-1].get("role") != "assistant"):
            raise InvalidRequestError(
                "continue_final_message needs the last message to be the assistant's", param="messages"
            )
        text = self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
            tokenize=False,
            **request.chat_template_kwargs,
        )
        add_special = bool(request.add_special_tokens)  # None: False, the template adds them
        return self.tokenizer.encode(text, add_special_tokens=add_special)

    def completion_ids(self, prompt: str | list[int], add_special_tokens: bool | None) -> list[int]:
        if isinstance(prompt, list):
            self.check_vocab(prompt, param="prompt")
            return list(prompt)
        add_special = True if add_special_tokens is None else add_special_tokens
        return self.tokenizer.encode(prompt or "", add_special_tokens=add_special)

    def check_vocab(self, token_ids: list[int], param: str) -> None:
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(
                f"token ids {bad[:5]} are outside the vocabulary (0..{self.vocab_size - 1})", param=param
            )

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
