"""Turn a request into prompt token ids with the checkpoint's own tokenizer and chat template.

Both engines get token ids from here, so the CPU engine and vLLM see identical prompts.
Options follow vLLM's request fields (vllm/entrypoints/openai/chat_completion/protocol.py):
``add_generation_prompt``, ``continue_final_message``, ``add_special_tokens`` (chat default
False: the template adds them; completions default True) and ``truncate_prompt_tokens`` (keep
the last k tokens; -1 means the context length).
The checkpoint's template (chosen by whoever deployed the model) renders inline, in the model
server's tokenizer thread. A request's own template renders in a worker process under a time
budget (``RequestTemplates``), so a slow one cannot hold the tokenizer thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from serve_app.deployments.requests import InferenceRequest
from serve_app.deployments.template_render import (
    accepted_kwargs,
    check_template_kwargs,
    template_errors,
    template_variables,
)
from serve_app.engines.protocol import PromptMedia
from serve_app.errors import (
    ChatTemplateError,
    ChatTemplateMissingError,
    ContextLengthError,
    InvalidRequestError,
)
from serve_app.workers import WorkerPool

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class TemplatePolicy:
    """A model's rules for request-supplied chat templates (registry fields of the same names)."""

    allow_request_chat_template: bool = False
    chat_template_timeout_s: float = 5.0


class RequestTemplates:
    """Renders request-supplied templates in ``RENDER_WORKERS`` killable worker processes.

    A render past ``timeout_s`` seconds gets 400 and its process is replaced; requests that use
    the checkpoint's template never wait for these processes."""

    RENDER_WORKERS = 2

    def __init__(self, model_name: str, timeout_s: float) -> None:
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.pool = WorkerPool(self.RENDER_WORKERS, warm_up="serve_app.deployments.template_render:warm_up")

    async def render(self, request: InferenceRequest, special_tokens: dict[str, str]) -> str:
        args = (
            request.chat_template,
            request.messages,
            request.chat_template_kwargs,
            special_tokens,
            self.model_name,
            request.tools,
        )
        try:
            return await self.pool.call(
                "serve_app.deployments.template_render:render_request_template", args, self.timeout_s
            )
        except TimeoutError:
            raise ChatTemplateError(
                f"the request's chat_template took longer than this model's budget of "
                f"{self.timeout_s:g} s to render; it was stopped",
                param="chat_template",
            ) from None


class PromptRenderer:
    def __init__(
        self, tokenizer: Any, model_name: str, max_model_len: int, policy: TemplatePolicy | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.vocab_size = len(tokenizer)
        # The longest token's text: a prompt of more characters than this times the context
        # cannot fit, whatever it says, so it is refused without tokenizing it (a 4 MiB prompt
        # held this model's tokenizer thread, and every request behind it, for 5-7 s).
        self.max_token_chars = max((len(token) for token in tokenizer.get_vocab()), default=1) or 1
        self.policy = policy or TemplatePolicy()
        template = getattr(tokenizer, "chat_template", None)
        self.has_chat_template = bool(template)
        self.special_tokens = {
            k: v for k, v in getattr(tokenizer, "special_tokens_map", {}).items() if isinstance(v, str)
        }
        templates = list(template.values()) if isinstance(template, dict) else [template] if template else []
        try:
            self.accepted_kwargs = accepted_kwargs(templates, self.special_tokens)
            # A template that never reads `tools` would drop them (vLLM renders it anyway).
            self.supports_tools = any("tools" in template_variables(t) for t in templates)
        except Exception as exc:  # a checkpoint template jinja cannot parse: requests get the 400
            logger.warning("chat template of %s does not parse: %s", model_name, exc)
            self.accepted_kwargs = accepted_kwargs([], self.special_tokens)
            self.supports_tools = False
        self.request_templates = (
            RequestTemplates(model_name, self.policy.chat_template_timeout_s)
            if self.policy.allow_request_chat_template
            else None
        )

    async def render_request_template(self, request: InferenceRequest) -> str | None:
        """The text of a chat request's own ``chat_template``; None when it has none.

        400 when the model does not allow request templates, or the template fails or times out."""
        if request.kind != "chat" or request.chat_template is None:
            return None
        if self.request_templates is None:
            raise ChatTemplateError(
                f"model {self.model_name!r} does not accept a chat_template in the request; its "
                "registry entry must set allow_request_chat_template: true",
                param="chat_template",
            )
        return await self.request_templates.render(request, self.special_tokens)

    def prompt_ids(self, request: InferenceRequest, rendered: str | None = None) -> list[list[int]]:
        """One token-id list per prompt (chat: one), truncated as asked, each checked to fit.

        ``rendered`` is a request template's text from ``render_request_template``.

        Raises ChatTemplateMissingError, InvalidRequestError (empty prompt, ids outside the
        vocabulary) or ContextLengthError (the prompt, or prompt + max_tokens, exceeds the context).
        """
        if request.truncate_prompt_tokens is None:
            self._check_chars(request, rendered)
        if rendered is not None:
            prompts = [self.tokenizer.encode(rendered, add_special_tokens=bool(request.add_special_tokens))]
        elif request.kind == "chat":
            prompts = [self.chat_ids(request.messages or [], request)]
        else:
            prompts = [self.completion_ids(prompt, request.add_special_tokens) for prompt in request.prompts]
        truncate = request.truncate_prompt_tokens
        if truncate is not None and truncate > self.max_model_len:
            raise InvalidRequestError(
                f"truncate_prompt_tokens ({truncate}) cannot be greater than this model's maximum "
                f"context length ({self.max_model_len})",
                param="truncate_prompt_tokens",
            )
        if truncate is not None:
            keep = self.max_model_len if truncate == -1 else truncate
            prompts = [ids[-keep:] for ids in prompts]
        for ids in prompts:
            self._check_fits(len(ids), request)
        return prompts

    def image_prompt(
        self, request: InferenceRequest, rendered: str | None, images: list[Any], prompts: Any, tensors: bool
    ) -> tuple[list[int], PromptMedia]:
        """A chat prompt with images: (its ids with each image's placeholder expanded, the
        ``PromptMedia`` for the engine). ``prompts`` is the model's ``ImagePrompts``.

        Raises InvalidRequestError for ``truncate_prompt_tokens`` (cutting the prompt could cut
        an image apart) and ContextLengthError when the expanded prompt does not fit."""
        if request.truncate_prompt_tokens is not None:
            raise InvalidRequestError(
                "truncate_prompt_tokens cannot be combined with images", param="truncate_prompt_tokens"
            )
        self._check_chars(request, rendered)
        if rendered is not None:
            ids = self.tokenizer.encode(rendered, add_special_tokens=bool(request.add_special_tokens))
        else:
            ids = self.chat_ids(request.messages or [], request)
        expanded, media = prompts.media(ids, images, tensors)
        self._check_fits(len(expanded), request)
        return expanded, media

    def _check_chars(self, request: InferenceRequest, rendered: str | None) -> None:
        """ContextLengthError, before tokenizing, for text too long to fit in any tokenization."""
        if rendered is not None:
            texts: list[Any] = [rendered]
        elif request.kind == "chat":  # every message lands in one prompt
            texts = [
                "".join(m["content"] for m in request.messages or [] if isinstance(m.get("content"), str))
            ]
        else:
            texts = list(request.prompts)
        for text in texts:
            if isinstance(text, str):
                self._refuse_chars(
                    text,
                    "request has {chars} characters of input",
                    "input",
                    "messages" if request.kind == "chat" else "prompt",
                )

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
        check_template_kwargs(request.chat_template_kwargs, self.accepted_kwargs, self.special_tokens)
        tools = getattr(request, "tools", None)
        if tools and not self.supports_tools:
            raise ChatTemplateError(
                f"model {self.model_name!r} has a chat template without tool support (it never reads "
                "`tools`), so tools cannot be shown to the model; leave tools out, or give the "
                "checkpoint a chat template that renders them",
                param="tools",
            )
        with template_errors(self.model_name):
            text = self.tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                add_generation_prompt=request.add_generation_prompt,
                continue_final_message=request.continue_final_message,
                tokenize=False,
                **request.chat_template_kwargs,
            )
        # The rendered text holds what _check_chars cannot count before rendering (text parts of
        # messages with images, tools, tool-call arguments): check it before the tokenizer, whose
        # one thread a 4 MB prompt would hold for seconds.
        self._check_rendered_chars(text)
        add_special = bool(request.add_special_tokens)  # None: False, the template adds them
        return self.tokenizer.encode(text, add_special_tokens=add_special)

    def _check_rendered_chars(self, text: str) -> None:
        self._refuse_chars(
            text, "messages render to {chars} characters (tools included)", "messages or tools", "messages"
        )

    def _refuse_chars(self, text: str, what: str, reduce: str, param: str) -> None:
        """ContextLengthError when ``text`` has more characters than ``max_model_len`` tokens of
        this tokenizer can hold (``max_token_chars`` each); ``what`` names the text (with
        ``{chars}``), ``reduce`` what to shorten."""
        if len(text) <= self.max_model_len * self.max_token_chars:
            return
        at_least = -(-len(text) // self.max_token_chars)
        raise ContextLengthError(
            f"This model's maximum context length is {self.max_model_len} tokens. However, your "
            f"{what.format(chars=len(text))}, at least {at_least} tokens for this tokenizer. "
            f"Please reduce the length of the {reduce}.",
            param=param,
        )

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
