"""The coroutine census behind /stats?waiting=1 (issue 13: where requests wait in a replica)."""

import asyncio
import re
import time
import types

from serve_app.deployments.await_census import Census, await_census

PLACE = r"\S+test_await_census\.py:\d+"


async def _held(event: asyncio.Event) -> None:
    await event.wait()


async def _outer(event: asyncio.Event) -> None:
    await _held(event)


@types.coroutine
def _generator_wait(future: asyncio.Future):
    yield from future  # as Ray's DeploymentResponse.__await__ does


async def _behind_a_generator(future: asyncio.Future) -> None:
    await _generator_wait(future)


async def _parked():
    yield 1
    yield 2


class _Hostile:
    @property
    def __class__(self):  # isinstance() would call this
        raise RuntimeError("no class for you")


def _census_while(make_waiters) -> dict:
    async def run():
        event = asyncio.Event()
        tasks = make_waiters(event)
        await asyncio.sleep(0)
        census = await_census()
        event.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return census

    return asyncio.run(run())


def test_the_census_names_where_coroutines_wait_and_who_awaits_them():
    census = _census_while(lambda event: [asyncio.ensure_future(_outer(event)) for _ in range(5)])
    place, count = census["top"][0]
    assert count == 5
    # the leaf, then its caller and the caller's caller
    assert re.fullmatch(
        rf"asyncio/locks\.py:\d+ wait awaits Future <- {PLACE} _held <- {PLACE} _outer", place
    ), place
    assert census["leaves"] >= 5 and census["suspended"] >= census["leaves"]


def test_a_wait_through_a_generator_based_awaitable_is_a_leaf_with_its_caller():
    def waiters(event):
        future = asyncio.get_running_loop().create_future()
        return [asyncio.ensure_future(_behind_a_generator(future)) for _ in range(4)]

    census = _census_while(waiters)
    places = dict(census["top"])
    wanted = [
        p
        for p in places
        if re.fullmatch(rf"{PLACE} _generator_wait awaits Future <- {PLACE} _behind_a_generator", p)
    ]
    assert wanted and places[wanted[0]] == 4, census["top"]


def test_tasks_not_yet_started_and_parked_generators_are_counted_apart():
    async def run():
        event = asyncio.Event()
        queued = [asyncio.ensure_future(_outer(event)) for _ in range(7)]  # no loop turn yet
        parked = _parked()
        await parked.__anext__()
        fresh = _parked()  # created, never started
        census = await_census()
        event.set()
        await asyncio.gather(*queued)
        await parked.aclose()
        await fresh.aclose()
        return census

    census = asyncio.run(run())
    not_started = dict(census["not_started"])
    assert [count for place, count in not_started.items() if place.endswith(" _outer")] == [7]
    assert [count for place, count in not_started.items() if place.endswith(" _parked")] == [1]
    assert census["at_yield"] == 1


def test_an_object_whose_class_raises_does_not_break_the_census():
    hostile = _Hostile()
    census = _census_while(lambda event: [asyncio.ensure_future(_outer(event))])
    assert census["leaves"] >= 1
    del hostile


def test_a_census_asked_for_again_within_its_interval_is_the_last_one():
    async def run():
        census = Census(min_interval_s=60)
        event = asyncio.Event()
        tasks = [asyncio.ensure_future(_outer(event)) for _ in range(3)]
        await asyncio.sleep(0)
        first = census.take()
        event.set()
        await asyncio.gather(*tasks)  # the waits are over, but the census is not taken again
        time.sleep(0.02)
        again = census.take()
        fresh = Census(min_interval_s=0)
        return first, again, fresh.take()

    first, again, fresh = asyncio.run(run())
    assert first["age_s"] == 0 and first["top"][0][1] == 3
    assert again["top"] == first["top"] and again["age_s"] >= 0.02
    assert fresh["age_s"] == 0 and not any(place.endswith(" _outer") for place, _ in fresh["top"])


def test_calls_held_in_grpcs_compiled_layer_are_counted_once_as_native_with_python_callers():
    """Run 7 (issue 13): about 200 router -> replica gRPC calls waited where only gRPC's Cython
    coroutines were; a Python-only census saw none of them on the replica's side."""
    import grpc

    calls_open = 7

    async def run():
        gate, entered = asyncio.Event(), asyncio.Event()
        handlers = 0

        async def handler(request, context):
            nonlocal handlers
            handlers += 1
            if handlers == calls_open:
                entered.set()
            await gate.wait()
            yield b"first"

        server = grpc.aio.server()
        methods = {"Call": grpc.unary_stream_rpc_method_handler(handler)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("svc", methods),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        calls = [channel.unary_stream("/svc/Call")(b"r") for _ in range(calls_open)]
        waits = [asyncio.ensure_future(call.wait_for_connection()) for call in calls]
        await asyncio.wait_for(entered.wait(), 30)
        census = await_census()
        gate.set()
        await asyncio.gather(*waits)
        for call in calls:
            call.cancel()
        await channel.close()
        await server.stop(None)
        return census

    census = asyncio.run(run())
    native = dict(census["native"])
    # the client's calls, waiting for the server's initial metadata, followed into gRPC's Python
    waiting = re.compile(
        r"_cygrpc/aio/callback_common\.pyx\.pxi execute_batch awaits Future"
        r" <- _cygrpc/aio/callback_common\.pyx\.pxi _receive_initial_metadata"
        r" <- _cygrpc/aio/call\.pyx\.pxi initiate_unary_stream"
        r" <- grpc/aio/_call\.py:\d+ _send_unary_request$"  # the line moves between grpcio releases
    )
    assert [count for place, count in native.items() if waiting.match(place)] == [calls_open], native
    # the server, waiting for the next call to accept
    assert native["_cygrpc/aio/server.pyx.pxi _request_call awaits Future"] == 1
    # each open call's watchers are counted as calls, not waits
    assert census["grpc_calls"] == {"client": calls_open, "server": calls_open}
    assert not [place for place in native if "_handle_status_once_received" in place]
    # counted once: the Python side of those waits is not a leaf of its own
    assert not [place for place, _ in census["top"] if "coroutine_wrapper" in place]
    # the handlers themselves are Python, in top
    assert any(re.search(r"wait awaits Future <- " + PLACE + " handler", place) for place, _ in census["top"])


def test_a_type_named_coroutine_whose_module_is_not_a_string_does_not_fail_the_census():
    """Run 8 (H200, Python 3.12): Cython's coroutine type lists ``__module__`` among its members,
    so the type's ``__module__`` was a member descriptor and every census answered
    ``AttributeError: 'member_descriptor' object has no attribute 'startswith'``."""

    class _Slots:
        __slots__ = ("member",)

    coroutine = type("coroutine", (), {})
    coroutine.__module__ = _Slots.__dict__["member"]  # what Cython's type gives on 3.12
    _alive = [coroutine() for _ in range(3)]  # in the collector's objects while the census runs

    async def run():
        event = asyncio.Event()
        task = asyncio.ensure_future(_outer(event))
        await asyncio.sleep(0)
        census = await_census()
        event.set()
        await task
        return census

    census = asyncio.run(run())
    assert "error" not in census
    held = re.compile(r"wait awaits Future <- " + PLACE + " _held <- " + PLACE + " _outer")
    assert any(held.search(place) for place, _ in census["top"])
    assert not census["native"]  # no coroutine parts: not a compiled coroutine


def test_a_compiled_coroutine_type_is_told_by_its_parts_whatever_its_module():
    """Cython's coroutine type: named ``coroutine``, with ``cr_await``, ``cr_frame``, ``cr_running``,
    ``send`` and ``throw``, and on Python 3.12 a member descriptor for ``__module__``."""
    from serve_app.deployments.await_census import _is_native

    class _Slots:
        __slots__ = ("member",)

    parts = dict.fromkeys(("cr_await", "cr_frame", "cr_running", "send", "throw"))
    compiled = type("coroutine", (), parts)
    compiled.__module__ = _Slots.__dict__["member"]
    assert _is_native(compiled)
    assert not _is_native(types.CoroutineType)  # Python's own: followed as Python
    assert not _is_native(type("coroutine", (), {}))
    assert not _is_native(type("Task", (), parts))
