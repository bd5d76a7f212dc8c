"""A request's choices: ``len(prompts) * n`` engine sequences, numbered as vLLM numbers them.

Choice ``p * n + i`` is sample ``i`` of prompt ``p`` (vLLM's completions server), with the
request's seed plus ``i`` (vllm/v1/engine/parallel_sampling.py), so a seeded request with
``n > 1`` gives the same choices on every run, and its first choice equals the same request
with ``n = 1``. ``echo`` puts the prompt's text (and, with logprobs, its logprobs) before the
first output of each choice; with ``max_tokens: 0`` the engine runs one token to score the
prompt and that token is not shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.deployments.logprobs import Position, output_positions, prompt_positions
from serve_app.deployments.requests import InferenceRequest
from serve_app.engines.protocol import GenerationDelta, GenerationRequest, PromptMedia, TokenLogprob


@dataclass
class Choice:
    index: int
    generation: GenerationRequest
    prompt_ids: list[int]
    echo_text: str = ""
    wants_logprobs: bool = False
    prompt_logprobs: list[TokenLogprob | None] | None = None  # from the engine's first delta
    started: bool = False

    def observe(self, delta: GenerationDelta) -> None:
        """Keep the prompt's logprobs, which come on the engine's first delta."""
        if self.prompt_logprobs is None and delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs

    def echo_positions(self) -> list[Position]:
        return prompt_positions(self.prompt_ids, self.prompt_logprobs)

    def chunk_parts(
        self, delta: GenerationDelta, request: InferenceRequest
    ) -> tuple[str, str | None, list[Position] | None]:
        """(text, finish reason, logprob positions) of the chunk this delta becomes."""
        text, finish = delta.text, delta.finish_reason
        positions = output_positions(delta.token_ids, delta.logprobs) if self.wants_logprobs else None
        if request.echo_only:
            text, finish = "", "length" if finish is not None else None
            positions = [] if positions is not None else None
        if not self.started:
            self.started = True
            if request.echo:
                text = self.echo_text + text
                if positions is not None:
                    positions = self.echo_positions() + positions
        return text, finish, positions


def plan_choices(
    request: InferenceRequest, prompts: list[list[int]], renderer: Any, media: PromptMedia | None = None
) -> list[Choice]:
    """The choices for ``prompts`` (token ids, one list per prompt), in index order.

    ``renderer`` (a PromptRenderer) gives the room left in the context for requests without
    ``max_tokens`` and the tokenizer that decodes token-id prompts for ``echo``. ``media``: the
    images of a chat prompt, which every choice's engine request carries.
    """
    single = len(prompts) * request.n == 1
    choices = []
    for p, ids in enumerate(prompts):
        if request.echo_only:
            max_tokens = 1
        elif request.max_tokens_given:
            max_tokens = request.sampling.max_tokens
        else:
            max_tokens = renderer.room_for_completion(len(ids))
        echo_text = _echo_text(request, p, ids, renderer) if request.echo else ""
        for i in range(request.n):
            index = p * request.n + i
            request_id = request.request_id if single else f"{request.request_id}-{index}"
            generation = GenerationRequest(request_id, ids, request.sample_sampling(i, max_tokens), media)
            wants = request.sampling.logprobs is not None
            choices.append(Choice(index, generation, ids, echo_text, wants))
    return choices


def _echo_text(request: InferenceRequest, p: int, ids: list[int], renderer: Any) -> str:
    prompt = request.prompts[p] if request.prompts else None
    if isinstance(prompt, str) and request.truncate_prompt_tokens is None:
        return prompt
    return renderer.tokenizer.decode(ids)
