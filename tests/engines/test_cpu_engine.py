"""CPUReferenceEngine on real ModelOpt FP8 checkpoints (tests/conftest.py makes them).

pytest-asyncio is not installed: each test drives the engine inside one ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from serve_app.engines.cpu import CPUReferenceEngine, _new_text
from serve_app.engines.fp8_loading import load_dequantized_model
from serve_app.engines.protocol import (
    Engine,
    EngineConfig,
    GenerationDelta,
    GenerationRequest,
    SamplingOptions,
)
from serve_app.errors import (
    ContextLengthError,
    EngineDeadError,
    EngineGenerateError,
    EngineNotStartedError,
    InvalidRequestError,
)

PROMPT = [429, 14, 445, 3, 382, 391, 389]  # "Hello, world! How are you" with the fixtures' tokenizer
GREEDY = SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True)


def _config(checkpoint: Path, **changes) -> EngineConfig:
    return EngineConfig(model_name="tiny", checkpoint=checkpoint, **changes)


def _request(request_id: str = "r", prompt: list[int] | None = None, **sampling) -> GenerationRequest:
    options = dataclasses.replace(GREEDY, **sampling)
    return GenerationRequest(request_id, list(PROMPT if prompt is None else prompt), options)


async def _started(checkpoint: Path, **changes) -> CPUReferenceEngine:
    engine = CPUReferenceEngine(_config(checkpoint, **changes))
    await engine.start()
    return engine


async def _collect(engine: CPUReferenceEngine, request: GenerationRequest) -> list[GenerationDelta]:
    return [delta async for delta in engine.generate(request)]


def _tokens(deltas: list[GenerationDelta]) -> list[int]:
    return [token for delta in deltas for token in delta.token_ids]


def _text(deltas: list[GenerationDelta]) -> str:
    return "".join(delta.text for delta in deltas)


def _decode(checkpoint: Path, tokens: list[int]) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    return tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _run(checkpoint: Path, scenario, **changes):
    """Start an engine, run ``scenario(engine)`` and shut the engine down, in one event loop."""

    async def main():
        engine = await _started(checkpoint, **changes)
        try:
            return await scenario(engine)
        finally:
            await engine.shutdown()

    return asyncio.run(main())


# ------------------------------------------------------------------------------------ output


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_greedy_matches_transformers_generate(checkpoint_factory, arch):
    checkpoint = checkpoint_factory(arch, "tiny")
    deltas = _run(checkpoint, lambda engine: _collect(engine, _request()))

    model = load_dequantized_model(checkpoint)
    prompt = torch.tensor([PROMPT])
    with torch.inference_mode():
        output = model.generate(prompt, do_sample=False, max_new_tokens=24, eos_token_id=[], pad_token_id=0)
    expected = output[0, len(PROMPT) :].tolist()
    assert len(expected) == 24
    assert _tokens(deltas) == expected
    assert [delta.completion_tokens for delta in deltas] == list(range(1, 25))
    assert {delta.prompt_tokens for delta in deltas} == {len(PROMPT)}
    assert [delta.finish_reason for delta in deltas] == [None] * 23 + ["length"]


def test_engine_satisfies_the_protocol(qwen2_checkpoint):
    # Started: on Python 3.11 isinstance() reads max_model_len, which raises before start().
    assert _run(qwen2_checkpoint, lambda engine: asyncio.sleep(0, isinstance(engine, Engine)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_streamed_text_joins_to_the_full_decode(qwen2_checkpoint, seed):
    request = _request(temperature=1.0, seed=seed, max_tokens=32)
    deltas = _run(qwen2_checkpoint, lambda engine: _collect(engine, request))
    assert _text(deltas) == _decode(qwen2_checkpoint, _tokens(deltas))
    assert all(not delta.text.endswith("\ufffd") for delta in deltas[:-1])


def test_same_seed_same_output_different_seeds_differ(qwen2_checkpoint):
    async def scenario(engine):
        runs = await asyncio.gather(
            _collect(engine, _request("a", temperature=1.0, seed=7)),
            _collect(engine, _request("b", temperature=1.0, seed=7)),
            _collect(engine, _request("c", temperature=1.0, seed=8)),
            _collect(engine, _request("d", temperature=1.0, seed=7, top_p=0.5)),
        )
        later = await _collect(engine, _request("e", temperature=1.0, seed=7))
        return [_tokens(run) for run in [*runs, later]]

    same, again, other, nucleus, later = _run(qwen2_checkpoint, scenario)
    assert same == again == later
    assert same != other
    assert same != nucleus


def test_stop_string_cuts_the_text(qwen2_checkpoint):
    full = _text(_run(qwen2_checkpoint, lambda engine: _collect(engine, _request())))
    start = next(i for i in range(2, len(full) - 3) if "\ufffd" not in full[i : i + 3])
    stop = full[start : start + 3]
    expected = full[: full.index(stop)]

    deltas = _run(qwen2_checkpoint, lambda engine: _collect(engine, _request(stop=("never here", stop))))
    assert _text(deltas) == expected
    assert deltas[-1].finish_reason == "stop"
    assert len(deltas) < 24
    assert stop not in _text(deltas)


def test_stop_text_is_held_back_until_decided():
    assert _new_text("hello wor", 0, ("world",), final=False) == ("hello ", False)
    assert _new_text("hello world!", 6, ("world",), final=False) == ("", True)
    assert _new_text("hello wax", 6, ("world",), final=False) == ("wax", False)
    assert _new_text("caf\ufffd", 0, (), final=False) == ("caf", False)
    assert _new_text("café", 3, (), final=False) == ("é", False)
    assert _new_text("caf\ufffd", 3, (), final=True) == ("\ufffd", False)
    assert _new_text("ab STOP cd", 0, ("STOP", "ab"), final=False) == ("", True)


def test_max_tokens_gives_length(qwen2_checkpoint):
    deltas = _run(qwen2_checkpoint, lambda engine: _collect(engine, _request(max_tokens=5)))
    assert len(_tokens(deltas)) == 5
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].completion_tokens == 5


def test_max_model_len_gives_length(qwen2_checkpoint):
    async def scenario(engine):
        assert engine.max_model_len == len(PROMPT) + 3
        with pytest.raises(ContextLengthError, match="the prompt has 10 tokens; this model's context is 10"):
            engine.generate(_request(prompt=[*PROMPT, 1, 2, 3]))
        return await _collect(engine, _request())

    deltas = _run(qwen2_checkpoint, scenario, max_model_len=len(PROMPT) + 3)
    assert len(_tokens(deltas)) == 3
    assert deltas[-1].finish_reason == "length"


def test_max_model_len_defaults_to_max_position_embeddings(qwen2_checkpoint):
    assert _run(qwen2_checkpoint, lambda engine: asyncio.sleep(0, engine.max_model_len)) == 2048


def test_eos_from_generation_config_stops(qwen2_checkpoint, copy_checkpoint):
    greedy = _tokens(_run(qwen2_checkpoint, lambda engine: _collect(engine, _request())))
    eos = greedy[4]
    checkpoint = copy_checkpoint(qwen2_checkpoint)
    path = checkpoint / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token_id": [2, eos]}))

    async def scenario(engine):
        return await _collect(engine, _request(ignore_eos=False)), await _collect(engine, _request())

    stopped, ignored = _run(checkpoint, scenario)
    assert _tokens(stopped) == greedy[: greedy.index(eos) + 1]
    assert stopped[-1].finish_reason == "stop"
    assert _tokens(ignored) == greedy


# ------------------------------------------------------------------------------ abort, cancel


def test_abort_mid_generation(qwen2_checkpoint):
    async def scenario(engine):
        deltas = []
        async for delta in engine.generate(_request("long", max_tokens=1000)):
            deltas.append(delta)
            if len(deltas) == 3:
                await engine.abort("long")
                await engine.abort("unknown id is ignored")
        return deltas, engine.stats()

    deltas, stats = _run(qwen2_checkpoint, scenario)
    assert deltas[-1].finish_reason == "abort"
    assert deltas[-1].text == ""
    assert deltas[-1].completion_tokens == 3
    assert len(deltas) == 4
    assert (stats.aborted_total, stats.finished_total, stats.running) == (1, 0, 0)


def test_closing_the_stream_aborts_the_request(qwen2_checkpoint):
    async def scenario(engine):
        stream = engine.generate(_request("closed", max_tokens=1000))
        await anext(stream)
        during = engine.stats()
        await stream.aclose()
        after_close = engine.stats()

        task = asyncio.create_task(_collect(engine, _request("cancelled", max_tokens=1000)))
        while engine.stats().generated_tokens_total < after_close.generated_tokens_total + 2:
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return during, after_close, engine.stats()

    during, after_close, after_cancel = _run(qwen2_checkpoint, scenario)
    assert (during.running, during.aborted_total) == (1, 0)
    assert (after_close.running, after_close.aborted_total) == (0, 1)
    assert (after_cancel.running, after_cancel.aborted_total) == (0, 2)


def test_abort_while_waiting_for_a_slot(qwen2_checkpoint):
    async def scenario(engine):
        first = engine.generate(_request("first", max_tokens=1000))
        await anext(first)
        second = asyncio.create_task(_collect(engine, _request("second")))
        while engine.stats().waiting == 0:
            await asyncio.sleep(0)
        await engine.abort("second")
        deltas = await second
        await first.aclose()
        return deltas, engine.stats()

    deltas, stats = _run(qwen2_checkpoint, scenario, max_num_seqs=1)
    assert [(d.finish_reason, d.completion_tokens, d.text) for d in deltas] == [("abort", 0, "")]
    assert (stats.aborted_total, stats.running, stats.waiting, stats.prompt_tokens_total) == (2, 0, 0, 7)


# -------------------------------------------------------------------------------- concurrency


def test_concurrent_requests_interleave_and_the_loop_keeps_ticking(qwen2_checkpoint):
    async def scenario(engine):
        solo = await _collect(engine, _request("solo"))
        samples = []
        ticks = 0
        done = asyncio.Event()

        async def heartbeat():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                samples.append(engine.stats())
                await asyncio.sleep(0)

        beat = asyncio.create_task(heartbeat())
        runs = await asyncio.gather(*(_collect(engine, _request(f"r{i}")) for i in range(5)))
        done.set()
        await beat
        return solo, runs, ticks, samples, engine.stats()

    solo, runs, ticks, samples, stats = _run(qwen2_checkpoint, scenario, max_num_seqs=2)
    assert all(_tokens(run) == _tokens(solo) for run in runs)
    assert ticks > 5 * 24  # the loop ran between the worker's steps
    assert max(sample.running for sample in samples) == 2
    assert max(sample.waiting for sample in samples) == 3
    assert (stats.finished_total, stats.running, stats.waiting) == (6, 0, 0)
    assert (stats.prompt_tokens_total, stats.generated_tokens_total) == (6 * 7, 6 * 24)


def test_a_failing_request_does_not_stop_the_others(qwen2_checkpoint):
    poison = 400  # inside the vocabulary; never in PROMPT

    async def scenario(engine):
        model = engine._loaded.model
        forward = model.forward

        def failing_forward(input_ids=None, **kwargs):
            if poison in input_ids[0].tolist():
                raise RuntimeError("boom")
            return forward(input_ids=input_ids, **kwargs)

        model.forward = failing_forward
        results = await asyncio.gather(
            _collect(engine, _request("good")),
            _collect(engine, _request("bad", prompt=[*PROMPT, poison])),
            return_exceptions=True,
        )
        await engine.check_health()
        return results, engine.stats()

    (good, bad), stats = _run(qwen2_checkpoint, scenario)
    assert good[-1].finish_reason == "length"
    assert isinstance(bad, EngineGenerateError)
    assert str(bad) == "request bad failed: RuntimeError('boom')"
    assert (stats.running, stats.finished_total) == (0, 1)


# -------------------------------------------------------------------------------- lifecycle


def test_calls_before_start_raise(qwen2_checkpoint):
    engine = CPUReferenceEngine(_config(qwen2_checkpoint))
    message = "CPU engine tiny is not started; call start()"
    with pytest.raises(EngineNotStartedError, match=message):
        engine.generate(_request())
    with pytest.raises(EngineNotStartedError, match=message):
        asyncio.run(engine.abort("r"))
    with pytest.raises(EngineNotStartedError, match=message):
        asyncio.run(engine.check_health())
    with pytest.raises(EngineNotStartedError, match=message):
        engine.stats()
    with pytest.raises(EngineNotStartedError, match=message):
        _ = engine.max_model_len
    asyncio.run(engine.shutdown())  # a no-op


def test_invalid_requests_are_refused(qwen2_checkpoint):
    async def scenario(engine):
        cases = [
            (_request(prompt=[]), "prompt", "the prompt has no tokens"),
            (_request(prompt=[5000]), "prompt", r"prompt token ids outside \[0, 466\): \[5000\]"),
            (_request(max_tokens=0), "max_tokens", "max_tokens must be >= 1, got 0"),
            (_request(temperature=-1.0), "temperature", "temperature must be at least 0"),
            (_request(top_p=0.0), "top_p", r"top_p must be in \(0, 1\]"),
        ]
        for request, param, message in cases:
            with pytest.raises(InvalidRequestError, match=message) as caught:
                engine.generate(request)
            assert caught.value.param == param
        stream = engine.generate(_request("dup", max_tokens=100))
        await anext(stream)
        with pytest.raises(InvalidRequestError, match="request id 'dup' is already running"):
            engine.generate(_request("dup"))
        await stream.aclose()

    _run(qwen2_checkpoint, scenario)


def test_shutdown_aborts_requests_and_kills_the_engine(qwen2_checkpoint):
    async def scenario(engine):
        await engine.check_health()
        stream = engine.generate(_request("r", max_tokens=1000))
        await anext(stream)
        await engine.shutdown()
        rest = [delta async for delta in stream]
        with pytest.raises(EngineDeadError, match="CPU engine tiny is dead: the engine was shut down"):
            await engine.check_health()
        with pytest.raises(EngineDeadError):
            engine.generate(_request("s"))
        await engine.shutdown()  # idempotent
        return rest

    rest = _run(qwen2_checkpoint, scenario)
    assert rest[-1].finish_reason == "abort"


def test_a_broken_worker_is_reported_dead(qwen2_checkpoint):
    async def scenario(engine):
        engine._executor.shutdown(wait=True)
        with pytest.raises(EngineDeadError, match="the worker thread is gone"):
            await _collect(engine, _request())
        with pytest.raises(EngineDeadError, match="the worker thread is gone"):
            await engine.check_health()

    _run(qwen2_checkpoint, scenario)
