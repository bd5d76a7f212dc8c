"""``Retry-After`` for an overloaded model, estimated from its queue.

When every replica of a model is busy and its handle's queue is full (``max_queued_requests``),
Ray Serve raises ``BackPressureError`` with the queue's length. The answer is **503** with
``Retry-After``, not 429: 429 says the client went past its own quota, 503 that the server is
out of capacity for everyone (OpenAI answers engine overload with 503, and its client retries
both; docs/operations.md, "Overload").

How long to wait: the router replica keeps, per model, a moving average of how long its requests
take (first byte of the request to the end of the answer or stream) and how many it has in
flight. Requests then finish at about ``in_flight / mean_duration`` per second, so the queue ahead
of a retry (``num_queued``) drains in ``num_queued * mean_duration / in_flight`` seconds. That,
rounded up and kept within [1, 60] s, is ``Retry-After``; 60 s is the most the ``openai`` client
honours (it falls back to its own backoff above that).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60
EWMA_WEIGHT = 0.1  # the newest request's share of the moving average
DEFAULT_DURATION_S = 1.0  # before a model has finished any request


@dataclass
class ModelLoad:
    """One model's requests through this router replica: in flight, and their mean duration (s)."""

    in_flight: int = 0
    mean_duration_s: float = DEFAULT_DURATION_S
    finished: int = 0

    def started(self) -> float:
        self.in_flight += 1
        return time.monotonic()

    def ended(self, started: float, admitted: bool = True) -> None:
        """A request is over. ``admitted`` False: the queue refused it (overload), so its ~0 s
        says nothing about how long requests take and is not averaged in."""
        self.in_flight = max(self.in_flight - 1, 0)
        if not admitted:
            return
        duration = time.monotonic() - started
        weight = 1.0 if self.finished == 0 else EWMA_WEIGHT
        self.mean_duration_s += weight * (duration - self.mean_duration_s)
        self.finished += 1

    def retry_after_s(self, num_queued: int) -> int:
        """Seconds until a place in a queue of ``num_queued`` is likely free (module docstring)."""
        seconds = max(num_queued, 1) * self.mean_duration_s / max(self.in_flight, 1)
        return int(min(max(math.ceil(seconds), MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S))
