"""The model server outside Ray: health, validation before the first chunk, default max_tokens."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from serve_app.deployments.model_server import ModelServer
from serve_app.deployments.requests import InferenceRequest
from serve_app.engines.cpu import CPUReferenceEngine
from serve_app.engines.protocol import EngineConfig, SamplingOptions
from serve_app.errors import ContextLengthError, EngineDeadError
from tests.busy_loop import hold_loop


async def started(checkpoint, max_model_len: int = 64) -> ModelServer:
    server = ModelServer.__new__(ModelServer)
    config = EngineConfig(model_name="m", checkpoint=checkpoint, max_model_len=max_model_len)
    await server.__init__(CPUReferenceEngine, config, 0.0)
    return server


def completion(prompt: str, max_tokens: int | None, stream: bool = False) -> InferenceRequest:
    return InferenceRequest(
        kind="completion",
        request_id="r1",
        model="m",
        created=0,
        prompts=(prompt,),
        stream=stream,
        sampling=SamplingOptions(max_tokens=max_tokens or 16, temperature=0, ignore_eos=True),
        max_tokens_given=max_tokens is not None,
    )


def test_a_dead_engine_fails_the_health_check_so_serve_replaces_the_replica(qwen2_checkpoint):
    async def run():
        server = await started(qwen2_checkpoint)
        await server.check_health()
        await server.engine.shutdown()
        with pytest.raises(EngineDeadError):
            await server.check_health()

    asyncio.run(run())


def test_a_hung_engine_check_fails_the_next_checks_at_once_until_it_answers(qwen2_checkpoint):
    """Three failures take a replica out of routing: the second and third must not each wait
    out the 1 s limit again while the first check is still unanswered."""

    async def run():
        server = await started(qwen2_checkpoint)
        answer = asyncio.Event()
        healthy_check = server.engine.check_health

        async def stuck() -> None:
            await answer.wait()

        server.engine.check_health = stuck
        with pytest.raises(EngineDeadError, match="did not answer its health check within 1 s"):
            await server.check_health()
        with pytest.raises(EngineDeadError, match=r"has not answered a health check sent 1\.\d s ago"):
            await server.check_health()
        answer.set()  # the engine answers late: the replica is healthy again
        await asyncio.sleep(0)
        server.engine.check_health = healthy_check
        await server.check_health()
        await server.engine.shutdown()

    asyncio.run(run())


def test_an_engine_probe_that_fails_after_the_limit_still_fails_the_next_check_at_once(
    qwen2_checkpoint,
):
    """The vLLM engine's probe has a 1 s limit of its own, so a hung core's check ends in a
    failure a moment after the server's limit: the next check must not wait out the limit again,
    and the one after it must pass once the engine answers."""

    async def run():
        server = await started(qwen2_checkpoint)
        healthy_check = server.engine.check_health
        asked: list[str] = []

        async def probe_times_out() -> None:
            asked.append("probe")
            await asyncio.sleep(1.2)
            raise EngineDeadError("the vLLM engine core did not answer within 1 s: it hangs")

        server.engine.check_health = probe_times_out
        with pytest.raises(EngineDeadError, match="did not answer its health check within 1 s"):
            await server.check_health()
        await asyncio.sleep(0.4)  # the engine's own limit ends that check
        server.engine.check_health = healthy_check  # and the core answers again
        with pytest.raises(
            EngineDeadError, match="failed its last health check: the vLLM engine core did not answer"
        ):
            await server.check_health()
        await asyncio.sleep(0.05)  # the background check it started answers
        await server.check_health()
        assert asked == ["probe"]
        await server.engine.shutdown()

    asyncio.run(run())


def test_a_busy_loop_does_not_fail_an_engine_that_answers_and_the_wall_cap_follows_the_timeout(
    qwen2_checkpoint,
):
    """The engine check's 1 s is loop time (run 6: the loop held up to 2.2 s under load), so an
    engine answering after 1.5 s of a busy loop passes; the wait still ends at 0.6 x the
    deployment's health_check_timeout_s, so the replica says why before Ray Serve gives up."""

    async def run():
        server = ModelServer.__new__(ModelServer)
        config = EngineConfig(model_name="m", checkpoint=qwen2_checkpoint, max_model_len=64)
        await server.__init__(CPUReferenceEngine, config, 0.0, health_check_timeout_s=4.0)
        healthy_check = server.engine.check_health

        async def slow_answer() -> None:
            await asyncio.sleep(1.5)

        hog = asyncio.ensure_future(hold_loop(0.2))
        try:
            server.engine.check_health = slow_answer
            await server.check_health()  # 1.5 s of wall time, under 1 s of loop time
            server.engine.check_health = lambda: asyncio.Event().wait()  # hung
            started = time.monotonic()
            with pytest.raises(EngineDeadError, match="did not answer its health check"):
                await server.check_health()
            waited = time.monotonic() - started
        finally:
            hog.cancel()
        server._failed_engine_check.cancel()
        server._failed_engine_check = None
        server.engine.check_health = healthy_check
        await server.engine.shutdown()
        return waited

    assert 2.4 <= asyncio.run(run()) < 3.0  # 0.6 x 4 s, not 1 s of loop time (about 4 s here)


def test_a_long_tokenize_never_holds_up_generation(qwen2_checkpoint):
    """/tokenize takes any length, as vLLM's does (10 MB took 10.8 s on the CI machine): it runs on
    a thread and tokenizer of its own, so completions keep being tokenized meanwhile."""
    import threading

    async def run():
        server = await started(qwen2_checkpoint)
        release = threading.Event()
        tokenizer = server.endpoint_prompts.tokenizer
        encode = tokenizer.encode

        def slow_encode(*args, **kwargs):
            release.wait(30)
            return encode(*args, **kwargs)

        tokenizer.encode = slow_encode
        job = {"prompt": "hello " * 10, "add_special_tokens": True, "return_token_strs": False}

        async def whole_answer() -> bytes:
            return b"".join([piece async for piece in server.tokenize(job)])

        tokenizing = asyncio.ensure_future(whole_answer())
        await asyncio.sleep(0.1)
        reply = await asyncio.wait_for(server.complete(completion("Hello", 2)), 10)
        assert reply["choices"][0]["finish_reason"] == "length"
        assert not tokenizing.done()
        release.set()
        answer = json.loads(await tokenizing)
        assert answer["count"] == len(server.prompts.tokenizer.encode(job["prompt"]))
        await server.engine.shutdown()

    asyncio.run(run())


def test_a_stream_fails_before_its_first_chunk_when_the_prompt_is_too_long(qwen2_checkpoint):
    async def run():
        server = await started(qwen2_checkpoint)
        stream = server.stream(completion("hello world " * 100, 4, stream=True))
        with pytest.raises(ContextLengthError, match="maximum context length is 64 tokens"):
            await anext(stream)
        await server.engine.shutdown()

    asyncio.run(run())


def test_without_max_tokens_the_completion_fills_the_context(qwen2_checkpoint):
    async def run():
        server = await started(qwen2_checkpoint)
        body = await server.complete(completion("Hello", None))
        chunks = [chunk async for chunk in server.stream(completion("Hello", None, stream=True))]
        await server.engine.shutdown()
        return body, chunks

    body, chunks = asyncio.run(run())
    assert body["usage"]["total_tokens"] == 64
    assert body["choices"][0]["finish_reason"] == "length"
    events = "".join(chunks).split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    streamed = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-2])
    assert streamed == body["choices"][0]["text"]


def test_tokenize_json_is_vllms_response_serialised_in_slices():
    from serve_app.deployments.model_server import JSON_SLICE, pieces_of, tokenize_json

    tokens = list(range(2 * JSON_SLICE + 5))  # three slices
    strs = [f'tok"{i}é\\' for i in tokens]
    parts = tokenize_json(128, tokens, strs)
    assert json.loads(b"".join(parts)) == {
        "count": len(tokens),
        "max_model_len": 128,
        "tokens": tokens,
        "token_strs": strs,
    }
    pieces = list(pieces_of(parts, 1000))
    assert b"".join(pieces) == b"".join(parts) and max(len(p) for p in pieces) <= 1000
    empty = b"".join(tokenize_json(8, [], None))
    assert empty == b'{"count":0,"max_model_len":8,"tokens":[],"token_strs":null}'


def test_a_large_tokenize_answer_crosses_in_pieces(qwen2_checkpoint, monkeypatch):
    """The answer to a 16 MiB body can pass 140 MB, more than one message between deployments
    carries (an attacker's 144 MB answer got a 500): it is sent as a stream of pieces."""
    import serve_app.deployments.model_server as model_server

    monkeypatch.setattr(model_server, "TOKENIZE_PIECE_BYTES", 100)

    async def run():
        server = await started(qwen2_checkpoint)
        job = {"prompt": "hello world " * 50, "add_special_tokens": True, "return_token_strs": True}
        pieces = [piece async for piece in server.tokenize(job)]
        await server.engine.shutdown()
        return pieces

    pieces = asyncio.run(run())
    assert len(pieces) > 5 and all(len(piece) <= 100 for piece in pieces)
    answer = json.loads(b"".join(pieces))
    assert answer["count"] == len(answer["tokens"]) == len(answer["token_strs"])
