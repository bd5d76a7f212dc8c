"""Where a request's time to first token goes inside the app, per stage, for /readyz.

Stages a model replica times for every request: ``router_to_replica`` (the router handled the
request -> this replica started it: Ray's routing and the hop; wall clocks, so across nodes it
includes their clock offset), ``tokenize`` (waiting for and running the tokenizer thread) and
``engine_first_output`` (the engine was handed the request -> its first output). A TTFT seen by
a client that these do not account for was spent in front of the router (HTTP ingress) or on the
way back.
"""

from __future__ import annotations

from collections import deque
from typing import Any

WINDOW = 1024  # the most recent requests a summary covers


class LatencyWindow:
    """The last ``WINDOW`` durations of one stage, summarised as percentiles."""

    def __init__(self, size: int = WINDOW) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.count += 1

    def summary(self) -> dict[str, Any]:
        samples = sorted(self._samples)
        if not samples:
            return {"count": self.count}

        def ms(quantile: float) -> float:
            return round(samples[min(len(samples) - 1, int(quantile * len(samples)))] * 1000, 2)

        return {
            "count": self.count,
            "window": len(samples),
            "p50_ms": ms(0.5),
            "p90_ms": ms(0.9),
            "p99_ms": ms(0.99),
            "max_ms": round(samples[-1] * 1000, 2),
        }


class StageLatencies:
    """One LatencyWindow per stage name."""

    STAGES = ("router_to_replica", "tokenize", "engine_first_output")

    def __init__(self) -> None:
        self.windows = {stage: LatencyWindow() for stage in self.STAGES}

    def add(self, stage: str, seconds: float) -> None:
        self.windows[stage].add(max(0.0, seconds))

    def summary(self) -> dict[str, Any]:
        return {stage: window.summary() for stage, window in self.windows.items()}
