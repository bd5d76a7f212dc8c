"""The CPU reference engine: any ModelOpt FP8 checkpoint, dequantized, run by transformers.

It implements the engine protocol for real (CI, development machines, and a reference to check
the vLLM engine's output against), one token at a time:

- One dedicated worker thread runs every forward pass, so the event loop never blocks. Each job
  is one step of one request (the prefill, or one decode step with that request's own KV cache),
  and each running request has at most one job queued, so requests interleave fairly.
- At most ``config.max_num_seqs`` requests run at once (no cap when it is None); the others wait
  in arrival order and count in ``stats().waiting``.
- EOS ids are the union of config.json's, generation_config.json's and the tokenizer's
  ``eos_token_id``. Text is decoded with the request's ``skip_special_tokens`` (vLLM's default True).
- Stats go to the ``stat_loggers`` given to the constructor, in vLLM's terms
  (engines/stats.py): scheduler state after each change, each step's tokens and latencies, each
  finished request's phases. The KV cache has no fixed pool here: ``kv_cache_usage`` is the
  tokens running requests hold over ``max_model_len x max_num_seqs`` (256 sequences when
  ``max_num_seqs`` is unset, vLLM's default outside the OpenAI server on large GPUs).
- Every ``SamplingOptions`` field is honoured with vLLM's meaning: the logits pipeline is
  engines/cpu_sampling.py (vLLM's v1 sampler), structured outputs engines/structured.py (xgrammar,
  as vLLM). A token that ends the request (EOS unless ``ignore_eos``, a ``stop_token_ids`` id, or
  the one completing a grammar) is in ``token_ids`` but its text is not, unless
  ``include_stop_str_in_output`` (vllm/v1/engine/detokenizer.py).
- Vision-language checkpoints (Qwen2.5-VL) run as transformers' ``Qwen2_5_VLForConditionalGeneration``:
  a request's ``media.tensors`` (the image processor's output) go into its prefill. The model's
  3-D rotary positions (M-RoPE) are computed per request (``get_rope_index`` at the prefill, its
  offset kept for the decode steps) and passed explicitly: the model would otherwise keep one
  request's offset on itself (``rope_deltas``) and use it for the next request's steps.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serve_app.engines.context_length import effective_max_model_len, read_text_config
from serve_app.engines.cpu_sampling import (
    LogitsPipeline,
    NoTokenAllowedError,
    prompt_logprobs,
    validate_sampling,
)
from serve_app.engines.delta_merge import merging
from serve_app.engines.fp8_loading import load_dequantized_model
from serve_app.engines.protocol import (
    EngineConfig,
    EngineStats,
    FinishReason,
    GenerationDelta,
    GenerationRequest,
    TokenLogprob,
)
from serve_app.engines.stats import FinishedRequestStats, IterationStats, SchedulerStats, StatLogger
from serve_app.engines.structured import GrammarBackend, GrammarConstraint, check_structured
from serve_app.errors import (
    ContextLengthError,
    EngineDeadError,
    EngineGenerateError,
    EngineNotStartedError,
    InvalidRequestError,
)

logger = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"  # what decoding an incomplete UTF-8 sequence ends with
KV_CACHE_SEQS_WHEN_UNCAPPED = 256  # vLLM's default max_num_seqs (vllm/engine/arg_utils.py)


@dataclass(eq=False)
class _Request:
    """One request's state; its KV cache and token list are touched only by one job at a time."""

    request: GenerationRequest
    generator: torch.Generator
    pipeline: LogitsPipeline
    stop_token_ids: frozenset[int]  # end the request when sampled: EOS (unless ignore_eos), stop_token_ids
    grammar: GrammarConstraint | None = None
    token_ids: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    cache: Any = None
    rope_delta: int = 0  # M-RoPE models: position offset of the decode steps (get_rope_index)
    aborted: bool = False
    finish_reason: FinishReason | None = None
    admitted: asyncio.Future[None] | None = None  # set while waiting for a slot
    # time.monotonic() of each phase, for the stats (engines/stats.py)
    arrival: float = 0.0
    scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)


@dataclass
class _Model:
    """What the worker thread needs to run a step: the model, tokenizer and call convention."""

    model: Any
    tokenizer: Any
    cache_kwarg: str  # "cache" (transformers >= 5.2x) or "past_key_values"
    keep_last_logits: bool  # forward accepts logits_to_keep
    vocab_size: int
    eos_token_ids: frozenset[int]
    max_model_len: int  # engines/context_length.py: vLLM's rule for this checkpoint and config
    grammars: GrammarBackend
    vision: bool = False  # takes images (PromptMedia.tensors)
    rope_index: Any = None  # M-RoPE models: model.model.get_rope_index; positions are then explicit


@dataclass
class _StepOutput:
    """What one worker step produced for one request."""

    token: int
    text: str  # all output text so far (without a stop token's text, see the module docstring)
    stopped: bool  # the token ends the request: a stop token, or the grammar is complete
    logprob: TokenLogprob | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


class CPUReferenceEngine:
    """The engine protocol on CPU with transformers; see the module docstring."""

    needs_image_tensors = True  # it runs the model on the image processor's pixel values

    def __init__(
        self,
        config: EngineConfig,
        dtype: torch.dtype | str | None = None,
        stat_loggers: list[StatLogger] | tuple[StatLogger, ...] = (),
    ) -> None:
        """``dtype`` overrides the checkpoint's dtype (e.g. ``"float32"``); None keeps it.
        ``stat_loggers`` receive the engine's stats (engines/stats.py) after every change."""
        self.config = config
        self.stat_loggers = list(stat_loggers)
        self._dtype = dtype
        self._loaded: _Model | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._max_model_len = 0
        self._max_num_seqs = config.max_num_seqs
        self._dead_reason: str | None = None
        self._running: dict[str, _Request] = {}
        self._waiting: deque[_Request] = deque()
        self._stats = EngineStats()

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load the dequantized model and the tokenizer in the worker thread.

        The context window is vLLM 0.24's (engines/context_length.py): ``config.max_model_len``,
        else the checkpoint's. Raises MaxModelLenError, naming both numbers, when
        ``config.max_model_len`` is past what the checkpoint supports, as vLLM refuses to start.
        """
        if self._loaded is not None:
            return
        if self._max_num_seqs is not None and self._max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {self._max_num_seqs}")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpu-engine")
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(executor, self._load)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor, self._loaded, self._max_model_len = executor, loaded, loaded.max_model_len
        self._dead_reason = None
        logger.info(
            "CPU engine %s started: max_model_len=%d, max_num_seqs=%s, eos=%s",
            self.config.model_name,
            self._max_model_len,
            self._max_num_seqs,
            sorted(loaded.eos_token_ids),
        )

    def _load(self) -> _Model:
        from transformers import AutoTokenizer

        from serve_app.engines.fp8_loading import is_vision_language

        checkpoint = Path(self.config.checkpoint)
        trust = self.config.trust_remote_code
        context = effective_max_model_len(
            read_text_config(checkpoint),
            self.config.max_model_len,
            disable_sliding_window=bool(self.config.engine_args.get("disable_sliding_window", False)),
        )  # raises MaxModelLenError before the (slow) weights are read
        model = load_dequantized_model(checkpoint, dtype=self._dtype, trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=trust)
        params = inspect.signature(model.forward).parameters
        vocab_size = model.get_input_embeddings().num_embeddings
        eos_token_ids = _eos_token_ids(checkpoint, model.config, tokenizer)
        inner = getattr(model, "model", None)
        return _Model(
            model=model,
            tokenizer=tokenizer,
            cache_kwarg="cache" if "cache" in params else "past_key_values",
            keep_last_logits="logits_to_keep" in params,
            vocab_size=vocab_size,
            eos_token_ids=eos_token_ids,
            max_model_len=context.value,
            grammars=GrammarBackend(tokenizer, vocab_size, eos_token_ids),
            vision=is_vision_language(model.config),
            rope_index=getattr(inner, "get_rope_index", None),
        )

    async def shutdown(self) -> None:
        """Abort every request, stop the worker and drop the model. Idempotent; a no-op before start."""
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        self._dead_reason = "the engine was shut down"
        for state in [*self._running.values(), *self._waiting]:
            self._flag_abort(state)
        await asyncio.to_thread(executor.shutdown, wait=True)  # lets queued steps finish
        self._loaded = None

    async def check_health(self) -> None:
        """Raise EngineDeadError if the worker thread can no longer run steps."""
        self._require_started()
        if self._dead_reason is None:
            try:
                self._executor.submit(_noop)
            except RuntimeError as error:  # the executor, or the interpreter, is shutting down
                self._dead_reason = f"the worker thread is gone: {error}"
        if self._dead_reason is not None:
            raise EngineDeadError(f"CPU engine {self.config.model_name} is dead: {self._dead_reason}")

    @property
    def max_model_len(self) -> int:
        self._require_started()
        return self._max_model_len

    def stats(self) -> EngineStats:
        """Counters; ``finished_total`` counts requests that ended with stop or length."""
        self._require_started()
        self._stats.running = len(self._running)
        self._stats.waiting = len(self._waiting)
        return EngineStats(**self._stats.as_dict())

    def _require_started(self) -> None:
        if self._loaded is None and self._dead_reason is None:
            raise EngineNotStartedError(f"CPU engine {self.config.model_name} is not started; call start()")

    # ----------------------------------------------------------------------------- requests

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Validate the request and return its stream; closing the stream aborts the request."""
        self._require_started()
        if self._dead_reason is not None:
            raise EngineDeadError(f"CPU engine {self.config.model_name} is dead: {self._dead_reason}")
        self._validate(request)
        # Steps run in a worker thread whatever the reader does; a reader slower than the steps
        # gets the new tokens merged into one delta, as from vLLM (engines/delta_merge.py).
        return merging(self._stream(request))

    async def abort(self, request_id: str) -> None:
        """End the request's stream with finish_reason 'abort'; unknown ids are ignored."""
        self._require_started()
        state = self._running.get(request_id) or next(
            (waiting for waiting in self._waiting if waiting.request_id == request_id), None
        )
        if state is not None:
            self._flag_abort(state)

    def _validate(self, request: GenerationRequest) -> None:
        sampling, prompt = request.sampling, request.prompt_token_ids
        if self._is_known(request.request_id):
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        if not prompt:
            raise InvalidRequestError("the prompt has no tokens", param="prompt")
        vocab = self._loaded.vocab_size
        bad = [token for token in prompt if not 0 <= token < vocab]
        if bad:
            raise InvalidRequestError(f"prompt token ids outside [0, {vocab}): {bad[:5]}", param="prompt")
        if len(prompt) >= self._max_model_len:
            raise ContextLengthError(
                f"the prompt has {len(prompt)} tokens; this model's context is {self._max_model_len} tokens "
                "including at least one generated token",
                param="prompt",
            )
        if request.media is not None and not (self._loaded.vision and request.media.tensors):
            raise InvalidRequestError(
                f"model {self.config.model_name!r} does not take images"
                if not self._loaded.vision
                else "an image request reached the CPU engine without the image processor's tensors",
                param="messages",
            )
        validate_sampling(sampling, vocab)
        if sampling.structured is not None:
            check_structured(sampling.structured)  # compiled later, off the event loop (_stream)

    def _is_known(self, request_id: str) -> bool:
        return request_id in self._running or any(state.request_id == request_id for state in self._waiting)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        if self._is_known(request.request_id):
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        arrival = time.monotonic()
        state = await self._new_state(request)
        state.arrival = arrival
        try:
            await self._admit(state)
            while not state.aborted:
                output = await self._run_step(state)
                if state.aborted:
                    break
                delta = self._advance(state, output)
                if delta.finish_reason is not None:
                    self._finish(state, delta.finish_reason)  # before the yield: the consumer may stop here
                yield delta
                if delta.finish_reason is not None:
                    return
            self._finish(state, "abort")
            yield GenerationDelta("", [], len(state.token_ids), state.prompt_tokens, "abort")
        except (GeneratorExit, asyncio.CancelledError):
            if state.finish_reason is None:  # the consumer closed the stream or was cancelled
                self._finish(state, "abort")
            raise
        finally:
            self._release(state)  # after an error; a no-op when already released

    async def _new_state(self, request: GenerationRequest) -> _Request:
        """The request's state, its grammar compiled in a thread (errors: InvalidRequestError)."""
        loaded, sampling = self._loaded, request.sampling
        if loaded is None:
            raise EngineDeadError(f"CPU engine {self.config.model_name} is dead: {self._dead_reason}")
        grammar = None
        if sampling.structured is not None:
            compiled = await asyncio.to_thread(loaded.grammars.compile, sampling.structured)
            grammar = loaded.grammars.constraint(compiled)
        stop_ids = set(sampling.stop_token_ids) | (set() if sampling.ignore_eos else loaded.eos_token_ids)
        return _Request(
            request=request,
            generator=_make_generator(sampling.seed),
            pipeline=LogitsPipeline(
                sampling, request.prompt_token_ids, loaded.vocab_size, loaded.eos_token_ids
            ),
            stop_token_ids=frozenset(stop_ids),
            grammar=grammar,
        )

    async def _admit(self, state: _Request) -> None:
        """Take a running slot, or wait for one (or for an abort) in arrival order."""
        if not self._waiting and self._has_free_slot():
            self._start_running(state)
            return
        state.admitted = asyncio.get_running_loop().create_future()
        self._waiting.append(state)
        self._report()
        try:
            await state.admitted
        finally:
            if state in self._waiting:
                self._waiting.remove(state)
        if not state.aborted:
            self._start_running(state)

    def _has_free_slot(self) -> bool:
        return self._max_num_seqs is None or len(self._running) < self._max_num_seqs

    def _start_running(self, state: _Request) -> None:
        self._running[state.request_id] = state
        state.scheduled = time.monotonic()
        self._stats.prompt_tokens_total += state.prompt_tokens
        self._report()

    def _release(self, state: _Request) -> None:
        """Free the request's slot and KV cache and wake the next waiting request; idempotent."""
        if state in self._waiting:
            self._waiting.remove(state)
        if self._running.get(state.request_id) is state:
            del self._running[state.request_id]
            state.cache = None
            self._admit_next()

    def _admit_next(self) -> None:
        while self._waiting and self._has_free_slot():
            waiting = self._waiting.popleft()
            if waiting.admitted is not None and not waiting.admitted.done():
                waiting.admitted.set_result(None)
                self._running[waiting.request_id] = waiting  # its slot, reserved until it wakes
                waiting.scheduled = time.monotonic()

    def _finish(self, state: _Request, reason: FinishReason) -> None:
        state.finish_reason = reason
        if reason == "abort":
            self._stats.aborted_total += 1
        else:
            self._stats.finished_total += 1
        self._release(state)
        self._report(IterationStats(finished_requests=[_finished_stats(state, reason)]))

    def _report(self, iteration: IterationStats | None = None) -> None:
        """Give the stat loggers the scheduler's state (and a step's stats, if any)."""
        if not self.stat_loggers:
            return
        held = sum(s.prompt_tokens + len(s.token_ids) for s in self._running.values() if s.cache is not None)
        capacity = max(self._max_model_len, 1) * (self._max_num_seqs or KV_CACHE_SEQS_WHEN_UNCAPPED)
        scheduler = SchedulerStats(len(self._running), len(self._waiting), min(held / capacity, 1.0))
        for stat_logger in self.stat_loggers:
            try:
                stat_logger.record(scheduler, iteration)
            except Exception:  # a metrics failure must not fail the request; it is logged
                logger.exception("stat logger %r failed", stat_logger)

    def _flag_abort(self, state: _Request) -> None:
        state.aborted = True
        if state.admitted is not None and not state.admitted.done():
            state.admitted.set_result(None)

    async def _run_step(self, state: _Request) -> _StepOutput:
        """Run one step of the request in the worker thread."""
        loaded, executor = self._loaded, self._executor
        if loaded is None or executor is None:
            raise EngineDeadError(f"CPU engine {self.config.model_name} is dead: {self._dead_reason}")
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, _step, loaded, state)
        except RuntimeError as error:  # the executor, or the interpreter, is shutting down
            self._dead_reason = f"the worker thread is gone: {error}"
            name = self.config.model_name
            raise EngineDeadError(f"CPU engine {name} is dead: {self._dead_reason}") from error
        try:
            return await future
        except NoTokenAllowedError as error:  # the request's own constraints admit no token: a 4xx
            structured = state.request.sampling.structured
            param = structured.param if structured is not None else "allowed_token_ids"
            raise InvalidRequestError(
                f"{error}; the request cannot produce any output", param=param
            ) from error
        except Exception as error:
            raise EngineGenerateError(f"request {state.request_id} failed: {error!r}") from error

    def _advance(self, state: _Request, output: _StepOutput) -> GenerationDelta:
        """Record the new token and turn it into a delta, deciding whether the request is done.

        As vllm/v1/core/sched/utils.py check_stop: a stop token (or a completed grammar) before
        the length limit; stop strings as vllm/v1/engine/detokenizer.py."""
        state.token_ids.append(output.token)
        self._stats.generated_tokens_total += 1
        self._report(_token_stats(state, time.monotonic()))
        sampling = state.request.sampling
        reason: FinishReason | None = None
        if output.stopped:
            reason = "stop"
        elif len(state.token_ids) >= min(sampling.max_tokens, self._max_model_len - state.prompt_tokens):
            reason = "length"
        new_text, stopped = _new_text(
            output.text,
            state.emitted_chars,
            sampling.stop,
            final=reason is not None,
            include_stop=sampling.include_stop_str_in_output,
        )
        state.emitted_chars += len(new_text)
        if stopped:
            reason = "stop"
        return GenerationDelta(
            new_text,
            [output.token],
            len(state.token_ids),
            state.prompt_tokens,
            reason,
            logprobs=None if output.logprob is None else [output.logprob],
            prompt_logprobs=output.prompt_logprobs,
        )


# --------------------------------------------------------------------------------- worker side


def _noop() -> None:
    return None


@torch.inference_mode()
def _step(loaded: _Model, state: _Request) -> _StepOutput:
    """Run one forward pass of one request in the worker thread and pick its next token."""
    sampling = state.request.sampling
    prefill = state.cache is None
    want_prompt_logprobs = prefill and sampling.prompt_logprobs is not None
    if prefill:
        input_ids = torch.tensor([state.request.prompt_token_ids], dtype=torch.long)
    else:
        input_ids = torch.tensor([[state.token_ids[-1]]], dtype=torch.long)
    kwargs: dict[str, Any] = {loaded.cache_kwarg: state.cache, "use_cache": True}
    kwargs.update(_vision_inputs(loaded, state, input_ids, prefill))
    if loaded.keep_last_logits and not want_prompt_logprobs:
        kwargs["logits_to_keep"] = 1  # every position's logits only when prompt logprobs are asked for
    output = loaded.model(input_ids=input_ids, **kwargs)
    cache = output.get(loaded.cache_kwarg)
    state.cache = cache if cache is not None else output.get("past_key_values")
    prompt = None
    if want_prompt_logprobs:
        prompt = prompt_logprobs(output.logits[0], state.request.prompt_token_ids, sampling.prompt_logprobs)
    logits = output.logits[0, -1].to(torch.float32, copy=True)
    if state.grammar is not None:
        state.grammar.mask(logits)  # before the sampler, as vLLM's model runner: logprobs see it
    token, logprob = state.pipeline.sample(logits, state.token_ids, state.generator)
    if state.grammar is not None:
        state.grammar.accept(token)
    stopped = token in state.stop_token_ids or (state.grammar is not None and state.grammar.terminated)
    shown = (
        state.token_ids if stopped and not sampling.include_stop_str_in_output else [*state.token_ids, token]
    )
    text = loaded.tokenizer.decode(
        shown, skip_special_tokens=sampling.skip_special_tokens, clean_up_tokenization_spaces=False
    )
    return _StepOutput(token, text, stopped, logprob, prompt)


def _vision_inputs(loaded: _Model, state: _Request, input_ids: torch.Tensor, prefill: bool) -> dict[str, Any]:
    """A vision-language model's extra forward arguments for one step: the image tensors at the
    prefill, and explicit M-RoPE ``position_ids`` [3, 1, tokens] at every step (module docstring)."""
    if loaded.rope_index is None:
        return {}
    media = state.request.media
    extra: dict[str, Any] = {}
    if prefill and media is not None:
        tensors = media.tensors
        grid = tensors["image_grid_thw"]
        extra = {"pixel_values": tensors["pixel_values"], "image_grid_thw": grid}
        positions, deltas = loaded.rope_index(
            input_ids, mm_token_type_ids=tensors["mm_token_type_ids"], image_grid_thw=grid
        )
        state.rope_delta = int(deltas.reshape(-1)[0])
    else:
        start = 0 if prefill else len(state.request.prompt_token_ids) + len(state.token_ids) - 1
        steps = torch.arange(start, start + input_ids.shape[1], dtype=torch.long) + state.rope_delta
        positions = steps.view(1, 1, -1).expand(3, 1, -1)
    extra["position_ids"] = positions
    return extra


# --------------------------------------------------------------------------------- helpers


def _token_stats(state: _Request, now: float) -> IterationStats:
    """One new token of one request, as vLLM's IterationStats counts it: its first token brings the
    prompt tokens and a time to first token (from arrival), later ones an inter-token latency."""
    if state.first_token is None:
        state.first_token = state.last_token = now
        return IterationStats(state.prompt_tokens, 1, time_to_first_tokens_iter=[now - state.arrival])
    latency = now - (state.last_token or now)
    state.last_token = now
    return IterationStats(0, 1, inter_token_latencies_iter=[latency])


def _finished_stats(state: _Request, reason: FinishReason) -> FinishedRequestStats:
    """The request's phases (vllm/v1/metrics/stats.py ``update_from_finished_request``)."""
    now = time.monotonic()
    scheduled = state.scheduled
    first, last = state.first_token, state.last_token
    return FinishedRequestStats(
        finish_reason=reason,
        e2e_latency=now - state.arrival,
        num_prompt_tokens=state.prompt_tokens,
        num_generation_tokens=len(state.token_ids),
        queued_time=(scheduled - state.arrival) if scheduled is not None else now - state.arrival,
        prefill_time=(first - scheduled) if first is not None and scheduled is not None else 0.0,
        inference_time=(last - scheduled) if last is not None and scheduled is not None else 0.0,
        decode_time=(last - first) if last is not None and first is not None else 0.0,
    )


def _new_text(
    text: str, emitted: int, stop: tuple[str, ...], final: bool, include_stop: bool = False
) -> tuple[str, bool]:
    """The part of ``text`` (all decoded output) to emit now, and whether a stop string was hit.

    Stop strings are searched in the not-yet-emitted part (plus enough before it to catch one that
    straddles); the text from the stop string on is never emitted, or with ``include_stop`` (vLLM's
    include_stop_str_in_output) the text after it. Unless ``final``, text that could still become a
    stop string, and an incomplete UTF-8 sequence, are held back.
    """
    if stop:
        start = max(0, emitted - max(len(s) for s in stop) + 1)
        found = [(index, s) for s in stop if s and (index := text.find(s, start)) >= 0]
        if found:
            index, hit = min(found)
            end = index + len(hit) if include_stop else index
            return text[emitted : max(end, emitted)], True
    if final:
        return text[emitted:], False
    end = len(text.rstrip(REPLACEMENT_CHAR))
    end -= _stop_prefix_length(text[:end], stop)
    return text[emitted : max(end, emitted)], False


def _stop_prefix_length(text: str, stop: tuple[str, ...]) -> int:
    """The length of the longest end of ``text`` that is a proper prefix of a stop string."""
    longest = 0
    for s in stop:
        for length in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:length]):
                longest = length
                break
    return longest


def _make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _eos_token_ids(checkpoint: Path, config: Any, tokenizer: Any) -> frozenset[int]:
    """config.json's, generation_config.json's and the tokenizer's eos_token_id, together."""
    ids: set[int] = set()
    sources: list[Any] = [getattr(config.get_text_config(), "eos_token_id", None), tokenizer.eos_token_id]
    generation_config = checkpoint / "generation_config.json"
    if generation_config.is_file():
        sources.append(json.loads(generation_config.read_text()).get("eos_token_id"))
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(item for item in value if isinstance(item, int))
    return frozenset(ids)
