import asyncio
import gc
import subprocess
import sys
import time

from serve_app.deployments.loop_health import LoopHealth


def test_a_callback_that_holds_the_loop_shows_as_lag():
    async def run():
        health = LoopHealth(interval_s=0.01)
        health.start()
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # a callback holding the loop, as a long full collection would
        await asyncio.sleep(0.05)
        health.close()
        return health.summary()["loop_lag"]

    lag = asyncio.run(run())
    assert lag["count"] >= 3
    assert lag["max_ms"] >= 250
    assert lag["p50_ms"] < 100


def test_full_collections_are_timed_from_start_and_younger_ones_are_not():
    async def run():
        health = LoopHealth()
        gc.collect()  # start-up: not counted
        health.start()
        health.start()  # idempotent: one hook
        gc.collect(0)
        assert health.summary()["gc_pause"] == {"count": 0}
        gc.collect()
        pause = health.summary()["gc_pause"]
        assert pause["count"] == 1 and pause["max_ms"] >= 0
        health.close()
        gc.collect()
        assert health.summary()["gc_pause"]["count"] == 1  # unhooked

    asyncio.run(run())


def test_process_age_counts_from_the_process_start():
    code = (
        "import time; time.sleep(1.0); "
        "from serve_app.deployments.loop_health import process_age_s; print(process_age_s())"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    age = float(out.stdout)
    assert 1.0 <= age <= time.monotonic() - started + 0.05  # clock ticks: 10 ms
