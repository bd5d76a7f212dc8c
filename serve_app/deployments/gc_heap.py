"""Keep Python's full garbage collections short in the serving processes.

A model replica's heap after start-up holds torch, transformers and (on the GPU) vLLM: about
300,000 tracked objects on the CPU engine, more with vLLM. A generation-2 collection walks all
of them: 250-480 ms on the 2-core CPU machine (``gc.collect(2)`` after importing the replica's
modules), during which the replica's event loop - which also runs vLLM's output handler - stops.
Under load the objects of requests in flight survive into the old generation and trigger such
collections, which then show as a tail in the time from the router to the replica.

vLLM's own API server does the same at start-up (``vllm/entrypoints/openai/api_server.py``
lifespan: "Mark the startup heap as static so that it's ignored by GC. Reduces pause times of
oldest generation collections." -> ``freeze_gc_heap()``, i.e. ``gc.collect()`` then
``gc.freeze()``), so a replica without it pauses where bare ``vllm serve`` does not.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger("ray.serve")


def freeze_startup_heap(context: str) -> int:
    """Collect once, then move every surviving object to the permanent generation.

    Call at the end of a replica's start-up (after the engine, tokenizer and modules are loaded).
    Frozen objects are never scanned again; they are still freed by reference counting. Returns
    the number of frozen objects (``gc.get_freeze_count()``)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    took_ms = (time.perf_counter() - started) * 1000
    logger.info("%s: froze %d start-up objects in %.0f ms", context, frozen, took_ms)
    return frozen
