"""deployments/loop_profile.py: what an event loop's thread spends its time on (/stats?profile=S)."""

import asyncio
import contextlib
import json
import sys
import threading
import time
from types import SimpleNamespace

from serve_app.deployments.loop_profile import LoopProfiler, profile_loop, summarize


def _encode_for(ms: float) -> None:
    """Holds the thread for ``ms`` of its own CPU time (not wall time: a busy neighbour on the
    machine must not shorten the work)."""
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
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
    # CPU time over wall time: lower when the machine's other processes take the cores
    assert 0.25 <= profile["busy_share"] <= 0.95, profile
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
    assert profile["loop_or_idle_s"] > 0.7 * profile["seconds"], profile


def test_callers_share_a_running_profile_and_get_the_last_one_within_the_interval(monkeypatch):
    import serve_app.deployments.loop_profile as module

    calls = []

    async def counted(seconds, interval_s=module.SAMPLE_INTERVAL_S):
        calls.append(seconds)
        await asyncio.sleep(0.2)
        return module.summarize_empty(seconds)

    monkeypatch.setattr(module, "profile_loop", counted)

    async def run():
        profiler = LoopProfiler(min_interval_s=30)
        first, second = await asyncio.gather(profiler.take(0.5), profiler.take(3))
        third = await profiler.take(0.5)
        return first, second, third

    first, second, third = asyncio.run(run())
    assert calls == [0.5]  # one profile for all three
    assert first["age_s"] == second["age_s"] == 0 and third["age_s"] >= 0


def test_a_cancelled_profile_does_not_stop_the_next():
    async def run():
        profiler = LoopProfiler(min_interval_s=30)
        asking = asyncio.ensure_future(profiler.take(0.5))
        await asyncio.sleep(0.05)
        profiler._running.cancel()  # as at a replica's shutdown
        with contextlib.suppress(asyncio.CancelledError):
            await asking
        return await profiler.take(0.5)

    profile = asyncio.run(run())
    assert profile["seconds"] >= 0.45 and "busy_share" in profile


def test_packages_are_named_under_the_folder_they_were_imported_from(monkeypatch):
    """The GPU machine installs with pip --target /tmp/site: no site-packages in the path."""
    monkeypatch.setattr(sys, "path", [*sys.path, "/tmp/site"])

    def frame(function, path, line, seconds, children=()):
        fields = {"function": function, "file_path": path, "line_no": line, "time": seconds}
        return SimpleNamespace(**fields, children=list(children))

    leaf = frame("process_outputs", "/tmp/site/vllm/v1/engine/output_processor.py", 81, 0.3)
    ray = frame("gen_wrapper", "/tmp/site/ray/serve/_private/replica.py", 303, 0.2)
    root = frame("run", threading.__file__, 971, 1.0, [leaf, ray])
    profile = summarize(root, 1.0, cpu_s=0.6)
    assert profile["by_package"] == [["vllm", 0.3, 0.3], ["ray", 0.2, 0.2]]
    assert profile["top_self"][0] == ["vllm/v1/engine/output_processor.py:81 process_outputs", 0.3]
    assert profile["loop_or_idle_s"] == 0.5  # the thread's entry: the loop waiting, or its C code
    assert profile["unattributed_busy_s"] == 0.1  # CPU time no Python frame accounts for


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
