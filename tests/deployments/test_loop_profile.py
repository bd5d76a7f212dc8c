"""deployments/loop_profile.py: what an event loop's thread spends its time on (/stats?profile=S)."""

import asyncio
import json
import time

from serve_app.deployments.loop_profile import LoopProfiler, profile_loop


def _encode_for(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        json.dumps(list(range(100)))


async def _busy(share: float) -> None:
    """Holds the loop ``share`` of every 10 ms, as a replica's streams do."""
    while True:
        _encode_for(10 * share)
        await asyncio.sleep(0.01 * (1 - share))


def _profile_while_busy(share: float, seconds: float = 0.6) -> dict:
    async def run():
        task = asyncio.ensure_future(_busy(share))
        try:
            return await profile_loop(seconds)
        finally:
            task.cancel()

    return asyncio.run(run())


def test_a_busy_loop_is_profiled_by_function_and_package():
    profile = _profile_while_busy(0.7)
    assert 0.55 <= profile["seconds"] < 1.5
    assert 0.5 <= profile["busy_share"] <= 0.95, profile
    assert profile["loop_or_idle_s"] > 0
    # the work is this file's function, most of it in the standard library's json encoder
    totals = dict(profile["top_total"])
    assert any(place.endswith(" _encode_for") for place in totals), totals
    packages = {name: share for name, _, share in profile["by_package"]}
    assert packages["python"] > 0.4, packages
    assert any(place.startswith("json/encoder.py:") for place, _ in profile["top_self"])


def test_an_idle_loop_is_mostly_waiting_in_select():
    profile = _profile_while_busy(0.05)
    assert profile["busy_share"] < 0.3, profile


def test_callers_share_a_running_profile_and_get_the_last_one_within_the_interval():
    async def run():
        profiler = LoopProfiler(min_interval_s=30)
        first, second = await asyncio.gather(profiler.take(0.3), profiler.take(0.3))
        started = time.perf_counter()
        third = await profiler.take(0.3)
        return first, second, third, time.perf_counter() - started

    first, second, third, waited = asyncio.run(run())
    assert first["seconds"] == second["seconds"] == third["seconds"]
    assert waited < 0.1  # the last profile, not a new one
    assert third["age_s"] >= 0 and "busy_share" in third


def _asked_for(seconds: float) -> list[float]:
    """What LoopProfiler.take(seconds) asks profile_loop for, without waiting it out."""
    import serve_app.deployments.loop_profile as module

    async def run():
        asked = []

        async def fake(s, interval_s=module.SAMPLE_INTERVAL_S):
            asked.append(s)
            return module.summarize_empty(s)

        real, module.profile_loop = module.profile_loop, fake
        try:
            await LoopProfiler().take(seconds)
        finally:
            module.profile_loop = real
        return asked

    return asyncio.run(run())


def test_profiles_are_capped_at_ten_seconds():
    assert _asked_for(1000) == [10.0]


def test_one_callback_holding_the_loop_throughout_is_work_not_idle():
    """Every sample then passes through the same callback: it is still that callback's time."""

    async def run():
        async def hold():
            _encode_for(700)  # starts as the profile starts, ends after it

        profiling = asyncio.ensure_future(profile_loop(0.3))
        await asyncio.sleep(0)  # the profile starts first
        holding = asyncio.ensure_future(hold())
        profile = await profiling
        await holding
        return profile

    profile = asyncio.run(run())
    assert profile["busy_share"] > 0.8, profile
    assert profile["loop_or_idle_s"] < 0.2, profile
    assert any(place.endswith(" _encode_for") for place, _ in profile["top_total"]), profile["top_total"]


def test_a_tiny_profile_is_lengthened_so_it_cannot_stand_for_30_s_with_no_samples():
    assert _asked_for(1e-300) == [0.5]
