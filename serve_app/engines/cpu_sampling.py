"""The CPU reference engine's logits pipeline: one request's next token, as vLLM's v1 sampler picks it.

``LogitsPipeline.sample`` follows ``vllm/v1/sample/sampler.py`` (``Sampler.forward``) step by step,
on one row of logits (shape ``[vocab]``):

1. logprobs from the logits as they reach the sampler, ``log_softmax`` in float32
   (vLLM's default ``logprobs_mode="raw_logprobs"``). vLLM's model runner applies the
   structured-output bitmask *before* the sampler, so the caller masks first (engines/structured.py);
2. ``allowed_token_ids`` (everything else to -inf);
3. ``min_tokens`` (EOS and ``stop_token_ids`` to -inf while fewer tokens were generated);
4. ``logit_bias`` (added);
5. penalties: repetition over prompt + output, then frequency and presence over the output;
6. below ``_SAMPLING_EPS`` temperature: greedy argmax; else temperature, min_p, top_k, top_p and a
   draw with the request's ``torch.Generator``.

transformers' processors are used where their rule is vLLM's (repetition penalty, min new tokens,
temperature, min_p, top_k, top_p); presence/frequency penalties, the allow-list and logit_bias are
a few lines here. ``validate_sampling`` checks a request's ``SamplingOptions`` as vLLM's
``SamplingParams._verify_args`` and ``SamplingParams.verify`` do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers.generation.logits_process import (
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from serve_app.engines.protocol import SamplingOptions, TokenLogprob
from serve_app.errors import InvalidRequestError

SAMPLING_EPS = 1e-5  # vllm/sampling_params.py _SAMPLING_EPS: a lower temperature means greedy
MAX_LOGPROBS = 20  # vllm/config/model.py ModelConfig.max_logprobs default (OpenAI's top_logprobs cap)

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NoTokenAllowedError(ValueError):
    """Every token's logit is -inf (or NaN) after the masks: nothing can be sampled.

    Raised when allowed_token_ids, min_tokens and the grammar exclude every token together (e.g. the
    grammar allows only EOS while min_tokens forbids it). vLLM would emit an arbitrary token here;
    the CPU engine fails the request (EngineGenerateError) with this message instead.
    """


class LogitsPipeline:
    """One request's logits processing and sampling, built once per request.

    ``prompt_token_ids`` is the request's prompt; ``vocab_size`` the model's logits width;
    ``eos_token_ids`` the model's EOS ids (min_tokens masks them, and ``stop_token_ids``, as vLLM's
    ``SamplingParams.all_stop_token_ids``, whatever ``ignore_eos`` says). Options must have passed
    ``validate_sampling``.
    """

    def __init__(
        self,
        options: SamplingOptions,
        prompt_token_ids: Sequence[int],
        vocab_size: int,
        eos_token_ids: frozenset[int],
    ) -> None:
        self.options = options
        self.vocab_size = vocab_size
        self._prompt = list(prompt_token_ids)
        self.greedy = options.temperature < SAMPLING_EPS
        self._processors = _processors(options, len(self._prompt), vocab_size, eos_token_ids)
        self._warpers = [] if self.greedy else _warpers(options)

    def sample(
        self, logits: torch.Tensor, output_token_ids: Sequence[int], generator: torch.Generator
    ) -> tuple[int, TokenLogprob | None]:
        """The next token for ``logits`` (shape ``[vocab]``, any float dtype; not modified).

        ``output_token_ids`` are the tokens generated so far. Returns the token id and, when the
        request asked for ``logprobs``, its TokenLogprob. Raises NoTokenAllowedError when the masks
        leave no token.
        """
        logits = logits.float()
        k = self.options.logprobs
        logprobs = torch.log_softmax(logits, dim=-1) if k is not None else None
        scores = self.process(logits, output_token_ids)
        if not bool(torch.isfinite(scores).any()):
            raise NoTokenAllowedError(
                "no token can be sampled: allowed_token_ids, min_tokens and the structured-output "
                "grammar together exclude every token"
            )
        token = int(torch.argmax(scores)) if self.greedy else self._draw(scores, generator)
        return token, None if logprobs is None else token_logprob(logprobs, token, k)

    def process(self, logits: torch.Tensor, output_token_ids: Sequence[int]) -> torch.Tensor:
        """Steps 2-5 (masks, bias, penalties) on float32 ``logits`` of shape ``[vocab]``: a new tensor."""
        scores = logits.unsqueeze(0)
        if self._processors:
            input_ids = torch.tensor([[*self._prompt, *output_token_ids]], dtype=torch.long)
            for processor in self._processors:
                scores = processor(input_ids, scores)
        scores = apply_presence_frequency(
            scores, output_token_ids, self.options.presence_penalty, self.options.frequency_penalty
        )
        return scores[0]

    def _draw(self, scores: torch.Tensor, generator: torch.Generator) -> int:
        """Temperature, min_p, top_k, top_p, then one draw: vLLM's ``Sampler.sample`` (random branch)."""
        batch = scores.unsqueeze(0)
        empty = torch.empty((1, 0), dtype=torch.long)
        for warper in self._warpers:
            batch = warper(empty, batch)
        return random_sample(batch[0], generator)


def _processors(
    options: SamplingOptions, prompt_length: int, vocab_size: int, eos_token_ids: frozenset[int]
) -> list[Processor]:
    """Steps 2-4 and the repetition penalty, in vLLM's order (``Sampler.apply_logits_processors``)."""
    processors: list[Processor] = []
    if options.allowed_token_ids is not None:
        processors.append(AllowedTokenIds(options.allowed_token_ids, vocab_size))
    stop_ids = sorted(eos_token_ids | set(options.stop_token_ids))
    if options.min_tokens > 0 and stop_ids:
        # vllm/v1/sample/logits_processor/builtin.py MinTokensLogitsProcessor: all_stop_token_ids
        # to -inf while len(output) < min_tokens; transformers' processor has the same rule.
        processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, options.min_tokens, stop_ids))
    if options.logit_bias:
        processors.append(LogitBias(options.logit_bias))
    if options.repetition_penalty != 1.0:
        # vllm/model_executor/layers/utils.py apply_penalties: tokens seen in prompt or output have
        # positive logits divided by the penalty and negative ones multiplied: transformers' rule.
        processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
    return processors


def _warpers(options: SamplingOptions) -> list[Processor]:
    """Temperature, min_p, top_k, top_p: vLLM's ``Sampler.sample`` and ``TopKTopPSampler``.

    min_p is vLLM's ``MinPLogitsProcessor`` (probability below min_p x the top probability, after
    temperature, to -inf); top_k keeps every token tied with the k-th; top_p drops the tokens whose
    ascending cumulative probability is <= 1 - top_p and always keeps the most likely
    (``vllm/v1/sample/ops/topk_topp_sampler.py`` apply_top_k_top_p). transformers' warpers apply
    the same rules.
    """
    warpers: list[Processor] = [TemperatureLogitsWarper(float(options.temperature))]
    if options.min_p > 0:
        warpers.append(MinPLogitsWarper(float(options.min_p)))
    if options.top_k > 0:
        warpers.append(TopKLogitsWarper(options.top_k))
    if options.top_p < 1.0:
        warpers.append(TopPLogitsWarper(float(options.top_p)))
    return warpers


class AllowedTokenIds:
    """Every logit outside ``allowed`` to -inf (vLLM's ``allowed_token_ids_mask``, sampler step 3)."""

    def __init__(self, allowed: Sequence[int], vocab_size: int) -> None:
        self._blocked = torch.ones(vocab_size, dtype=torch.bool)
        self._blocked[list(allowed)] = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(self._blocked, -math.inf)


class LogitBias:
    """Adds each (token id, bias) pair to that token's logit.

    Source: vllm/v1/sample/logits_processor/builtin.py LogitBiasLogitsProcessor (the bias is added,
    before the penalties). The OpenAI layer clamps biases to [-100, 100]; the engine adds them as given.
    """

    def __init__(self, bias: Sequence[tuple[int, float]]) -> None:
        self._ids = torch.tensor([token for token, _ in bias], dtype=torch.long)
        self._values = torch.tensor([value for _, value in bias], dtype=torch.float32)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.index_add(1, self._ids, self._values.unsqueeze(0).to(scores.dtype))


def apply_presence_frequency(
    scores: torch.Tensor, output_token_ids: Sequence[int], presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's presence and frequency penalties over the OUTPUT tokens; ``scores`` is ``[1, vocab]``.

    ``logit -= frequency * count + presence * (count > 0)``, count being the token's occurrences in
    the generated tokens (vllm/model_executor/layers/utils.py apply_penalties, "We follow the
    definition in OpenAI API"). transformers has no processor for these. Returns a new tensor.
    """
    if (presence == 0 and frequency == 0) or not output_token_ids:
        return scores
    vocab = scores.shape[-1]
    counts = torch.bincount(torch.tensor(list(output_token_ids), dtype=torch.long), minlength=vocab)[:vocab]
    counts = counts.to(scores.dtype)
    return scores - (frequency * counts + presence * (counts > 0).to(scores.dtype)).unsqueeze(0)


def random_sample(scores: torch.Tensor, generator: torch.Generator) -> int:
    """One draw from ``softmax(scores)`` (shape ``[vocab]``, -inf allowed) with ``generator``.

    vLLM's ``random_sample`` (vllm/v1/sample/ops/topk_topp_sampler.py): ``argmax(probs / q)`` with
    ``q ~ Exponential(1)`` is a draw from ``probs`` (the exponential race). It never raises on a
    distribution ``torch.multinomial`` would call invalid; q is kept above 0 so a zero probability
    cannot win.
    """
    probs = torch.softmax(scores.float(), dim=-1)
    q = torch.empty_like(probs).exponential_(generator=generator).clamp_(min=torch.finfo(probs.dtype).tiny)
    return int(torch.argmax(probs / q))


def token_logprob(logprobs: torch.Tensor, token: int, k: int) -> TokenLogprob:
    """``token``'s logprob in ``logprobs`` (shape ``[vocab]``) and the ``k`` most likely, best first.

    As vLLM's ``Sampler.gather_logprobs`` (torch.topk of the raw logprobs); ties keep topk's order.
    """
    value = logprobs[token]
    rank = int((logprobs >= value).sum())  # vLLM's rank: tokens at least as likely, itself included
    return TokenLogprob(token, float(value), _top(logprobs, k), rank)


def prompt_logprobs(
    logits: torch.Tensor, prompt_token_ids: Sequence[int], k: int
) -> list[TokenLogprob | None]:
    """The prompt's logprobs from the prefill's logits (shape ``[len(prompt), vocab]``).

    Entry i > 0 is prompt token i's logprob given tokens < i (row i - 1) and the ``k`` most likely
    tokens there; entry 0 is None. Raw log_softmax in float32, as vLLM's prompt logprobs
    (vllm/v1/worker/gpu_model_runner.py _get_prompt_logprobs_dict). Raises ValueError if the rows
    do not match the prompt.
    """
    if logits.shape[0] != len(prompt_token_ids):
        raise ValueError(f"{logits.shape[0]} rows of logits for a prompt of {len(prompt_token_ids)} tokens")
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    targets = torch.tensor(list(prompt_token_ids[1:]), dtype=torch.long)
    chosen = logprobs.gather(1, targets.unsqueeze(1))
    ranks = (logprobs >= chosen).sum(dim=1).tolist()
    entries: list[TokenLogprob | None] = [None]
    for row, (token, value) in enumerate(zip(targets.tolist(), chosen[:, 0].tolist(), strict=True)):
        entries.append(TokenLogprob(token, float(value), _top(logprobs[row], k), int(ranks[row])))
    return entries


def _top(logprobs: torch.Tensor, k: int) -> tuple[tuple[int, float], ...]:
    if k <= 0:
        return ()
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))
    return tuple(zip(ids.tolist(), values.tolist(), strict=True))


# --------------------------------------------------------------------------------- validation


def validate_sampling(options: SamplingOptions, vocab_size: int) -> None:
    """Check ``options`` as vLLM does; raise InvalidRequestError with ``param`` = the field's name.

    Ranges from vllm/sampling_params.py ``SamplingParams._verify_args``; token ids against the
    model's vocabulary as ``SamplingParams.verify`` (``_validate_logit_bias``,
    ``_validate_stop_token_ids``, ``_validate_allowed_token_ids``); logprobs up to
    ``ModelConfig.max_logprobs`` (20). ``structured`` is checked by engines/structured.py.
    """
    _check_numbers(options)
    _check_counts(options)
    _check_token_ids(options, vocab_size)
    if any(not s for s in options.stop):
        raise InvalidRequestError("stop strings must not be empty", param="stop")


def _fail(param: str, message: str) -> None:
    raise InvalidRequestError(f"{param} {message}", param=param)


def _check_numbers(options: SamplingOptions) -> None:
    finite = ["temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"]
    for name in finite:
        if not math.isfinite(getattr(options, name)):
            _fail(name, f"must be a finite number, got {getattr(options, name)}")
    if options.temperature < 0:
        _fail("temperature", f"must be at least 0, got {options.temperature}")
    if not 0 < options.top_p <= 1:
        _fail("top_p", f"must be in (0, 1], got {options.top_p}")
    if not 0 <= options.min_p <= 1:
        _fail("min_p", f"must be in [0, 1], got {options.min_p}")
    for name in ("presence_penalty", "frequency_penalty"):
        if not -2 <= getattr(options, name) <= 2:
            _fail(name, f"must be in [-2, 2], got {getattr(options, name)}")
    if options.repetition_penalty <= 0:
        _fail("repetition_penalty", f"must be greater than 0, got {options.repetition_penalty}")


def _check_counts(options: SamplingOptions) -> None:
    if options.max_tokens < 1:
        _fail("max_tokens", f"must be >= 1, got {options.max_tokens}")
    if options.top_k < -1:
        _fail("top_k", f"must be 0 or -1 (disabled), or at least 1, got {options.top_k}")
    if options.min_tokens < 0:
        _fail("min_tokens", f"must be >= 0, got {options.min_tokens}")
    if options.min_tokens > options.max_tokens:
        _fail("min_tokens", f"must be <= max_tokens={options.max_tokens}, got {options.min_tokens}")
    for name in ("logprobs", "prompt_logprobs"):
        k = getattr(options, name)
        if k is not None and not 0 <= k <= MAX_LOGPROBS:
            _fail(name, f"must be in [0, {MAX_LOGPROBS}], got {k}")


def _check_token_ids(options: SamplingOptions, vocab_size: int) -> None:
    def outside(ids: Any) -> list[int]:
        return [token for token in ids if not 0 <= token < vocab_size]

    checks = [
        ("stop_token_ids", options.stop_token_ids),
        ("logit_bias", [token for token, _ in options.logit_bias]),
        ("allowed_token_ids", options.allowed_token_ids or ()),
    ]
    for name, ids in checks:
        if bad := outside(ids):
            _fail(name, f"has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
    if options.allowed_token_ids is not None and not options.allowed_token_ids:
        _fail("allowed_token_ids", "must not be empty")
    if bad_bias := [value for _, value in options.logit_bias if not math.isfinite(value)]:
        _fail("logit_bias", f"values must be finite numbers, got {bad_bias[:5]}")
