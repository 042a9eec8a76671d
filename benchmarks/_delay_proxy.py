"""A TCP proxy that delays every byte by a fixed time each way, for counting
round trips: with ``delay`` seconds each way, every round trip a protocol
makes costs ``2 * delay`` of wall time, so the difference in wall time between
two ways of doing the same thing, divided by ``2 * delay``, is how many more
round trips one of them makes. It also counts them exactly: a client
"flight" is data the client sends after the server last spoke (what a
client sends before the server answers rides the same round trip)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["DelayProxy", "delay_proxy"]

_READ_SIZE = 65536


class DelayProxy:
    """Where the proxy listens, and the client flights it has seen."""

    def __init__(self) -> None:
        self.port = 0
        self.client_flights = 0


class _Talk:
    """Who of a proxied connection's two sides spoke last."""

    def __init__(self, proxy: DelayProxy) -> None:
        self._proxy = proxy
        self._last = ""

    def heard(self, side: str) -> None:
        if side == "client" and self._last != "client":
            self._proxy.client_flights += 1
        self._last = side


async def _forward(
    source: anyio.abc.SocketStream,
    sink: anyio.abc.SocketStream,
    delay: float,
    heard: Callable[[], None],
) -> None:
    # A reader stamps each chunk with when it is due; a writer sends it then.
    # Chunks keep their order, and a burst costs one delay, not one per chunk.
    send: MemoryObjectSendStream[tuple[float, bytes]]
    receive: MemoryObjectReceiveStream[tuple[float, bytes]]
    send, receive = anyio.create_memory_object_stream(1000)

    async def read() -> None:
        async with send:
            while True:
                try:
                    data = await source.receive(_READ_SIZE)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return
                heard()
                await send.send((anyio.current_time() + delay, data))

    async def write() -> None:
        async with receive:
            async for due, data in receive:
                await anyio.sleep(max(0.0, due - anyio.current_time()))
                try:
                    await sink.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await sink.send_eof()

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        group.start_soon(write)


@contextlib.asynccontextmanager
async def delay_proxy(port: int, delay: float) -> AsyncIterator[DelayProxy]:
    """Listen on a free loopback port, forwarding each connection to
    127.0.0.1:``port`` with ``delay`` seconds added each way; yields the
    proxy (its port, its count of client flights). Every proxied connection
    is closed on exit."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy = DelayProxy()
    proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(client: anyio.abc.SocketStream) -> None:
        talk = _Talk(proxy)
        async with (
            client,
            await anyio.connect_tcp("127.0.0.1", port) as server,
            anyio.create_task_group() as group,
        ):
            group.start_soon(_forward, client, server, delay, lambda: talk.heard("client"))
            group.start_soon(_forward, server, client, delay, lambda: talk.heard("server"))

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        try:
            yield proxy
        finally:
            group.cancel_scope.cancel()
