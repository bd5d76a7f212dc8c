"""The request a router hands a model server: plain values, cheap to pickle across the Ray hop."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from serve_app.engines.protocol import SamplingOptions

# Seeds are int64 or uint64 in vLLM (torch.Generator.manual_seed's range): [-2**63, 2**64 - 1].
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1


@dataclass(frozen=True)
class InferenceRequest:
    """One chat or completions request, validated, in the model server's terms.

    A request becomes ``len(prompts) * n`` engine sequences ("choices"): choice ``p * n + i`` is
    sample ``i`` of prompt ``p``, as vLLM's completions server numbers them. Chat has one prompt.
    """

    kind: Literal["chat", "completion"]
    request_id: str
    model: str  # the id the client sent (an alias stays an alias in the response)
    created: int
    sampling: SamplingOptions  # sample 0's; sample i uses seed + i (vllm/v1/engine/parallel_sampling.py)
    max_tokens_given: bool  # False: fill the rest of the context window, as OpenAI does
    messages: list[dict[str, Any]] | None = None
    prompts: tuple[str | list[int], ...] = ()  # completions only
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    echo: bool = False  # completions: the prompt's text (and logprobs) lead each choice
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool | None = None  # None: chat False, completions True (vLLM's defaults)
    truncate_prompt_tokens: int | None = None  # keep the prompt's last k tokens; -1: the context
    return_tokens_as_token_ids: bool = False  # logprobs name tokens "token_id:<id>"
    chat_template: str | None = None  # a request's own template (only if the model allows it)
    tools: list[dict[str, Any]] | None = None  # OpenAI tools, passed to the chat template
    tool_choice: Literal["none", "auto", "required", "function"] = "none"  # function: tool_name
    tool_name: str | None = None
    parallel_tool_calls: bool = True  # False: at most one call per choice (vLLM's rule)
    received_at: float = 0.0  # time.time() when the router's handler began (before the body); 0: unknown
    images: tuple[str, ...] = ()  # chat: the image_url parts' URLs, in message order (deployments/media.py)

    @property
    def echo_only(self) -> bool:
        """``echo`` with ``max_tokens: 0``: the prompt (and its logprobs) and no completion."""
        return self.echo and self.sampling.max_tokens == 0

    def sample_sampling(self, sample: int, max_tokens: int | None = None) -> SamplingOptions:
        """Sample ``sample``'s options: the seed offset by the sample's index, as vLLM does for n."""
        seed = self.sampling.seed
        if seed is not None and sample:
            seed = seed + sample
            if seed > SEED_MAX:  # wraps like uint64, so every sample stays a valid seed
                seed -= 2**64
        options = replace(self.sampling, seed=seed)
        if max_tokens is not None:
            options = replace(options, max_tokens=max_tokens)
        return options
