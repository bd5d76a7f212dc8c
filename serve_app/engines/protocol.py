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


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions


@dataclass
class GenerationDelta:
    """New output since the previous delta of the same request.

    ``text`` is the newly decoded text (stop strings already cut off); ``completion_tokens`` is
    cumulative. ``finish_reason`` is set on the last delta only.
    """

    text: str
    token_ids: list[int]
    completion_tokens: int
    prompt_tokens: int
    finish_reason: FinishReason | None = None


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
    """An LLM engine behind a model server. Calls before ``start()`` raise EngineNotStartedError."""

    config: EngineConfig

    async def start(self) -> None:
        """Load the checkpoint; return when the engine can generate."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Stream the request's output. Cancelling the iterator aborts the request.

        Generation does not wait for the reader: deltas the reader has not taken yet are merged
        into one (engines/delta_merge.py), so a reader may poll as slowly as it likes."""

    async def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with finish_reason 'abort'. Unknown ids are ignored."""

    async def check_health(self) -> None:
        """Return if healthy; raise EngineDeadError if the engine can no longer serve."""

    def stats(self) -> EngineStats:
        """Counters for /readyz and autoscaling diagnostics."""

    @property
    def max_model_len(self) -> int:
        """The context window the engine enforces (prompt + completion tokens)."""

    async def shutdown(self) -> None:
        """Stop the engine and free its memory; idempotent."""
