from __future__ import annotations

import gc

from serve_app.deployments.gc_heap import freeze_startup_heap


def test_freeze_moves_the_heap_out_of_full_collections() -> None:
    """After start-up, a full collection no longer walks the start-up heap (vLLM's freeze_gc_heap)."""
    survivors = [[i] for i in range(10_000)]  # long-lived start-up objects
    try:
        frozen = freeze_startup_heap("test")
        assert frozen >= len(survivors)
        assert gc.get_freeze_count() >= len(survivors)
        tracked = {id(o) for o in gc.get_objects(generation=2)}
        assert not any(id(o) in tracked for o in survivors[:100])
    finally:
        gc.unfreeze()
