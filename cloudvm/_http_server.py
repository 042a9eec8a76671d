"""A minimal HTTP/1.1 server loop over one stream (h11 does the parsing).

Used to answer metadata-service requests that arrive through SSH
direct-tcpip channels, in loopback instances and in test servers.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import asyncssh
import h11

__all__ = ["HTTPHandler", "HTTPRequest", "HTTPResponse", "serve_http"]

_READ_SIZE = 65536
_MAX_BODY = 1 << 20  # bytes; metadata requests are tiny


@dataclasses.dataclass(frozen=True)
class HTTPRequest:
    """One request: ``path`` is percent-decoded and without the query string;
    header names are lower case."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass(frozen=True)
class HTTPResponse:
    """One response; ``content-length`` is added automatically."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str = "text/plain"


#: A handler: a plain or async function from request to response.
HTTPHandler = Callable[[HTTPRequest], "HTTPResponse | Awaitable[HTTPResponse]"]


async def serve_http(
    handler: HTTPHandler, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
) -> None:
    """Answer HTTP/1.1 requests from ``reader`` with ``handler`` until the
    client closes or a protocol error occurs; then close ``writer``."""
    conn = h11.Connection(h11.SERVER)

    async def next_event() -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await reader.read(_READ_SIZE))

    try:
        while True:
            event = await next_event()
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, or the client misbehaved
            body = b""
            while not isinstance(part := await next_event(), h11.EndOfMessage):
                if not isinstance(part, h11.Data) or len(body) + len(part.data) > _MAX_BODY:
                    return
                body += part.data
            target = event.target.decode("ascii", "replace")
            path, _, query = target.partition("?")
            request = HTTPRequest(
                method=event.method.decode("ascii", "replace"),
                path=unquote(path),
                query=query,
                headers={k.decode().lower(): v.decode("latin-1") for k, v in event.headers},
                body=body,
            )
            answer = handler(request)
            response = await answer if inspect.isawaitable(answer) else answer
            headers = [
                ("content-type", response.content_type),
                ("content-length", str(len(response.body))),
                *response.headers.items(),
            ]
            # One write, so one SSH packet (not three) carries the answer.
            writer.write(
                (conn.send(h11.Response(status_code=response.status, headers=headers)) or b"")
                + (conn.send(h11.Data(data=response.body)) or b"")
                + (conn.send(h11.EndOfMessage()) or b"")
            )
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, OSError, asyncssh.Error):
        return
    finally:
        writer.close()
