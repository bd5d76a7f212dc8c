"""What an engine reports about its work, in vLLM 0.24's terms (``vllm/v1/metrics/stats.py``).

The CPU reference engine fills these and hands them to its stat loggers, as vLLM's output
processor hands ``SchedulerStats`` and ``IterationStats`` to ``StatLoggerBase.record``; the
deployments layer turns them into vLLM-named Prometheus series (``deployments/metrics.py``). The
vLLM engine needs none of this: vLLM's own ``RayPrometheusStatLogger`` records its series.

Times are seconds (``time.monotonic()`` differences). Nothing here imports vLLM or Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SchedulerStats:
    """The scheduler's state after a change: vLLM's ``SchedulerStats`` fields we fill.

    ``kv_cache_usage`` is a fraction in [0, 1] (vLLM's ``vllm:kv_cache_usage_perc``, despite the
    name, is a fraction too)."""

    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0


@dataclass(frozen=True)
class FinishedRequestStats:
    """One request at its end (vLLM's ``FinishedRequestStats``).

    ``finish_reason`` is "stop", "length" or "abort". Phases as vLLM measures them: queued =
    scheduled - queued, prefill = first token - scheduled, decode = last token - first token,
    inference = last token - scheduled, e2e = end - arrival. A request aborted before it was
    scheduled has 0 for the phases it never reached."""

    finish_reason: str
    e2e_latency: float
    num_prompt_tokens: int
    num_generation_tokens: int
    queued_time: float = 0.0
    prefill_time: float = 0.0
    inference_time: float = 0.0
    decode_time: float = 0.0


@dataclass
class IterationStats:
    """What one engine step produced (vLLM's ``IterationStats``): token counts, the first-token
    and inter-token latencies it observed, the requests it finished, and preemptions."""

    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    time_to_first_tokens_iter: list[float] = field(default_factory=list)
    inter_token_latencies_iter: list[float] = field(default_factory=list)
    finished_requests: list[FinishedRequestStats] = field(default_factory=list)
    num_preempted_reqs: int = 0


@runtime_checkable
class StatLogger(Protocol):
    """Receives an engine's stats, as vLLM's ``StatLoggerBase``. Called on the engine's event
    loop after each step; must be quick and must not raise."""

    def record(self, scheduler_stats: SchedulerStats | None, iteration_stats: IterationStats | None) -> None:
        """Record one step's stats (either may be None)."""
