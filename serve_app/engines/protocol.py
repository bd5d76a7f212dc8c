"""The engine protocol every engine implements (CPU reference engine, vLLM engine).

An engine takes prompt token ids (the model server tokenizes and applies the chat template, so
both engines see identical input) and streams ``GenerationDelta``s. Failures are exceptions from
``serve_app.errors`` (EngineGenerateError, EngineDeadError, ...), never values in the stream.

Nothing here imports vLLM, Ray or torch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class EngineConfig:
    """What an engine needs to start: plain values taken from the registry's ModelSpec."""

    model_name: str
    checkpoint: Path
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    kv_cache_dtype: str = "auto"
    trust_remote_code: bool = False
    compile_cache_dir: Path | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)
    # Vision-language checkpoints: most images per prompt (vLLM's limit_mm_per_prompt["image"]);
    # None for text-only ones, which get no multimodal arguments.
    limit_images_per_prompt: int | None = None


StructuredKind = Literal["json", "json_object", "regex", "choice", "grammar"]


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the output's text, as vLLM's ``StructuredOutputsParams`` takes it.

    ``kind`` -> ``value``: ``json`` -> a JSON schema serialised as a JSON string; ``json_object``
    -> None (any JSON object); ``regex`` -> a regular expression; ``choice`` -> a tuple of the
    allowed strings; ``grammar`` -> an EBNF grammar (xgrammar / GBNF syntax). ``strict`` is
    OpenAI's ``json_schema.strict`` (no properties beyond the schema's).
    """

    kind: StructuredKind
    value: str | tuple[str, ...] | None = None
    strict: bool = False
    param: str = "response_format"  # the request field it came from, named in errors


@dataclass(frozen=True)
class SamplingOptions:
    """One sequence's sampling settings, with vLLM's ``SamplingParams`` names and meanings.

    Ranges are checked at the HTTP edge (router/protocol.py); engines check them again.
    Order of application, as vLLM's v1 sampler: logprobs are taken from the raw logits; then
    allowed_token_ids, min_tokens, logit_bias, the structured-output mask, and the penalties
    (repetition over prompt + output, presence and frequency over the output); then temperature
    (below 1e-5: greedy), min_p, top_k and top_p.
    """

    max_tokens: int
    temperature: float = 1.0  # below 1e-5 means greedy (vLLM's _SAMPLING_EPS)
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_k: int = 0  # 0 (or -1): all tokens
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to the logit)
    stop_token_ids: tuple[int, ...] = ()
    allowed_token_ids: tuple[int, ...] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None  # None: no logprobs; k >= 0: the sampled token's and the k most likely
    prompt_logprobs: int | None = None  # the same for every prompt token (the first has none)
    structured: StructuredOutput | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probabilities at one position, from the model's raw (unprocessed) distribution.

    ``logprob`` is the chosen token's; ``top`` the ``k`` most likely (id, logprob) pairs in rank
    order, as vLLM's ``Logprob`` dicts (``logprobs_mode="raw_logprobs"``) give them. ``rank`` is
    the chosen token's rank in the vocabulary (1 = most likely; vLLM's ``Logprob.rank``), None
    where an engine does not report it.
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()
    rank: int | None = field(default=None, compare=False)  # derived: equal logprobs compare equal


@dataclass(frozen=True)
class PromptMedia:
    """The images of one prompt (vision-language models only; deployments/vision.py builds it).

    ``images``: decoded RGB ``PIL.Image.Image`` objects in prompt order, as vLLM's
    ``multi_modal_data["image"]`` takes them. ``prompt_token_ids``: the chat template's ids, with
    one placeholder token per image, which vLLM's multimodal processor expands itself (vLLM's own
    chat server passes the same ``TokensPrompt`` plus ``multi_modal_data``). ``tensors``: the image
    processor's outputs for a transformers model (``pixel_values`` [patches, channels * patch
    volume], ``image_grid_thw`` [images, 3], ``mm_token_type_ids`` [1, expanded prompt length]);
    empty for engines that process images themselves.
    """

    images: tuple[Any, ...]
    prompt_token_ids: list[int]
    tensors: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate. ``prompt_token_ids`` is the prompt as the model sees it, image
    placeholders expanded (what vLLM reports as ``RequestOutput.prompt_token_ids``)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    media: PromptMedia | None = None


@dataclass
class GenerationDelta:
    """New output since the previous delta of the same request.

    ``text`` is the newly decoded text (stop strings already cut off); ``completion_tokens`` is
    cumulative. ``finish_reason`` is set on the last delta only. ``logprobs`` (when the request
    asked for them) has one entry per id in ``token_ids``. ``prompt_logprobs`` (when asked for)
    comes on the first delta only: one entry per prompt token, None for the first.
    """

    text: str
    token_ids: list[int]
    completion_tokens: int
    prompt_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    finished_total: int = 0
    aborted_total: int = 0
    prompt_tokens_total: int = 0
    generated_tokens_total: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@runtime_checkable
class Engine(Protocol):
    """An LLM engine behind a model server. Calls before ``start()`` raise EngineNotStartedError.

    Constructed as ``engine_cls(config, stat_loggers=[...])``: what the engine reports its metrics
    to (engines/stats.py loggers for the CPU engine, vLLM's stat-logger factories for vLLM)."""

    config: EngineConfig
    # True when generate() needs PromptMedia.tensors (the image processor's pixel values); an
    # engine that runs the checkpoint's processor itself (vLLM) sets False.
    needs_image_tensors: bool

    async def start(self) -> None:
        """Load the checkpoint; return when the engine can generate."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Stream the request's output. Cancelling the iterator aborts the request.

        Generation does not wait for the reader: deltas the reader has not taken yet are merged
        into one (engines/delta_merge.py), so a reader may poll as slowly as it likes."""

    async def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with finish_reason 'abort'. Unknown ids are ignored."""

    async def check_health(self) -> None:
        """Return if healthy; raise EngineDeadError if the engine can no longer serve. An engine
        that hangs may also never return: the model server bounds the wait (ENGINE_HEALTH_TIMEOUT_S)."""

    def stats(self) -> EngineStats:
        """Counters for /readyz and autoscaling diagnostics."""

    @property
    def max_model_len(self) -> int:
        """The context window the engine enforces (prompt + completion tokens)."""

    async def shutdown(self) -> None:
        """Stop the engine and free its memory; idempotent."""
