"""The router's relay of a model server's SSE stream, without Ray (a fake response generator)."""

from __future__ import annotations

import asyncio

from serve_app.deployments.openai_format import DONE
from serve_app.router.app import Router


class FakeStream:
    """Stands in for a DeploymentResponseGenerator: yields chunks, then maybe never ends."""

    def __init__(self, chunks: list[str], hang_after: bool) -> None:
        self.chunks = list(chunks)
        self.hang_after = hang_after
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        if self.chunks:
            return self.chunks.pop(0)
        if self.hang_after:
            await asyncio.sleep(3600)
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancelled = True


async def relay_all(first: str, stream: FakeStream) -> list[str]:
    return [chunk async for chunk in Router._relay(first, stream)]


def test_the_response_ends_at_done_without_waiting_for_the_ray_stream_to_end():
    stream = FakeStream(['data: {"b"}\n\n', 'data: {"c"}\n\n' + DONE], hang_after=True)
    chunks = asyncio.run(asyncio.wait_for(relay_all('data: {"a"}\n\n', stream), timeout=5))
    assert chunks[-1].endswith(DONE) and len(chunks) == 3
    assert not stream.cancelled  # a finished request is not aborted


def test_a_one_chunk_response_ends_at_once():
    stream = FakeStream([], hang_after=True)
    chunks = asyncio.run(asyncio.wait_for(relay_all('data: {"a"}\n\n' + DONE, stream), timeout=5))
    assert chunks == ['data: {"a"}\n\n' + DONE]


def test_a_client_that_goes_away_cancels_the_request():
    async def run() -> FakeStream:
        stream = FakeStream(['data: {"b"}\n\n'], hang_after=True)
        relay = Router._relay('data: {"a"}\n\n', stream)
        await anext(relay)
        await anext(relay)
        await relay.aclose()
        return stream

    assert asyncio.run(run()).cancelled
