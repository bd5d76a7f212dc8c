"""A stand-in for a model replica's loop under full load, for the health checks' tests."""

from __future__ import annotations

import asyncio
import time


async def hold_loop(block_s: float) -> None:
    """Hold the running loop ``block_s`` at a time, with a turn for other callbacks between (as
    vLLM's output handler holds a replica's loop under load). Runs until cancelled."""
    while True:
        time.sleep(block_s)
        await asyncio.sleep(0)
