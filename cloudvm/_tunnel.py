"""HTTP through an SSH connection: httpx over asyncssh direct-tcpip channels.

httpx does the HTTP (through httpcore and h11); this module only supplies an
httpcore network backend whose "TCP connections" are channels that the SSH
server opens on our behalf. That is how a driver reaches the cloud metadata
service (169.254.169.254:80) *as seen from inside the instance*.

The server on the other end is not proven yet (proving it is what the
tunnel is for), so it is treated as hostile: every answer is bounded in size
(:data:`MAX_ANSWER_HEAD`, :data:`MAX_ANSWER_BODY`), never decompressed, and
read within one deadline, and text it chose is escaped before it reaches an
error message.
"""

from __future__ import annotations

import ssl
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Iterable

import anyio
import asyncssh
import httpcore
import httpx

from ._text import printable

__all__ = [
    "MAX_ANSWER_BODY",
    "MAX_ANSWER_HEAD",
    "METADATA_URL",
    "SSHTunnelTransport",
    "escape_reason",
    "metadata_client",
]

#: Where every cloud we support serves instance metadata.
METADATA_URL = "http://169.254.169.254"
#: The most body bytes the tunnel reads from one answer.
MAX_ANSWER_BODY = 64 * 1024
#: The most bytes of reason phrase and headers one answer may have.
MAX_ANSWER_HEAD = 16 * 1024
# The most bytes read off a channel for one request: head, body, chunk
# framing and any 1xx answers before the real one. A server that sends more
# (an endless stream of "100 Continue", say) is cut off here.
_MAX_ANSWER_WIRE = MAX_ANSWER_HEAD + MAX_ANSWER_BODY + 16 * 1024
# asyncssh buffers what a channel received until we read it, up to the
# channel's window: keep that bounded too (asyncssh's default is 2 MiB).
_CHANNEL_WINDOW = 2 * _MAX_ANSWER_WIRE
# The tunnel refuses TLS, but httpx builds an SSL context for every transport
# and by default loads the whole CA bundle into it (about 50 ms, measured in
# benchmarks/ fan-out); hand it this one, never used, instead.
_UNUSED_SSL_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def escape_reason(exc: asyncssh.Error) -> asyncssh.Error:
    """Escape, in place, the reason text the SSH peer chose for ``exc`` (a
    channel refusal, a disconnect) so that neither its message nor a
    traceback of it carries raw control characters; return ``exc``."""
    reason = printable(exc.reason)
    if reason != exc.reason:
        exc.reason = reason
        exc.args = (reason,)
    return exc


class _Deadline:
    """One deadline over everything done through one transport; the clock
    starts at its first request. ``seconds`` None: no deadline."""

    def __init__(self, seconds: float | None) -> None:
        if seconds is not None and not seconds > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {seconds!r}")
        self.seconds = seconds
        self._at: float | None = None

    def start(self) -> None:
        if self.seconds is not None and self._at is None:
            self._at = anyio.current_time() + self.seconds

    def remaining(self) -> float | None:
        """Seconds left (0 once passed); None without a deadline."""
        if self._at is None:
            return None
        return max(0.0, self._at - anyio.current_time())

    def exceeded(self, request: httpx.Request) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(
            f"no complete answer within {self.seconds:g} s "
            "(one deadline bounds every request through this tunnel)",
            request=request,
        )


class _ChannelStream(httpcore.AsyncNetworkStream):
    def __init__(
        self,
        reader: asyncssh.SSHReader[bytes],
        writer: asyncssh.SSHWriter[bytes],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._budget = _MAX_ANSWER_WIRE  # bytes still allowed for the current answer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._budget <= 0:
            raise httpcore.ReadError(
                f"the answer exceeds {_MAX_ANSWER_WIRE // 1024} KiB (headers and body); "
                "the tunnel reads no more"
            )
        try:
            with anyio.fail_after(timeout):
                data = await self._reader.read(min(max_bytes, self._budget))
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc) or "read timed out") from exc
        except asyncssh.Error as exc:
            raise httpcore.ReadError(str(escape_reason(exc))) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc
        self._budget -= len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        self._budget = _MAX_ANSWER_WIRE  # a new request: its answer starts afresh
        try:
            with anyio.fail_after(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc) or "write timed out") from exc
        except asyncssh.Error as exc:
            raise httpcore.WriteError(str(escape_reason(exc))) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        # Synchronous, so no cancellation stops it half way; the server's
        # close is not waited for (a round trip per channel): asyncssh
        # completes it in the background, or the connection's close does.
        self._writer.close()

    async def start_tls(
        self,
        ssl_context: typing.Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("TLS through an SSH tunnel is not supported")

    def get_extra_info(self, info: str) -> typing.Any:
        return None


class _ChannelBackend(httpcore.AsyncNetworkBackend):
    """Opens each "TCP connection" as a direct-tcpip channel on ``conn``."""

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                reader, writer = await self._conn.open_connection(
                    host, port, window=_CHANNEL_WINDOW
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"opening a channel to {host}:{port} timed out") from exc
        except (OSError, asyncssh.Error) as exc:
            if isinstance(exc, asyncssh.Error):
                escape_reason(exc)  # the server chose this text
            raise httpcore.ConnectError(
                f"the SSH server refused a channel to {host}:{port}: {exc}"
            ) from exc
        return _ChannelStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class _CappedBody(httpx.AsyncByteStream):
    """An answer's body, cut off after MAX_ANSWER_BODY bytes or at the deadline."""

    def __init__(
        self, inner: httpx.AsyncByteStream, deadline: _Deadline, request: httpx.Request
    ) -> None:
        self._inner = inner
        self._deadline = deadline
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        parts = aiter(self._inner)
        try:
            while True:
                try:
                    with anyio.fail_after(self._deadline.remaining()):
                        part = await anext(parts)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise self._deadline.exceeded(self._request) from None
                size += len(part)
                if size > MAX_ANSWER_BODY:
                    raise httpx.RemoteProtocolError(
                        f"the answer's body exceeds the {MAX_ANSWER_BODY // 1024} KiB cap; "
                        "the tunnel reads no more",
                        request=self._request,
                    )
                yield part
        finally:
            if isinstance(parts, AsyncGenerator):
                await parts.aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()


def _refuse_unbounded(response: httpx.Response, request: httpx.Request) -> None:
    # Raise unless the answer's head promises a bounded, uncompressed body.
    encodings = [
        token.strip()
        for value in response.headers.get_list("content-encoding")
        for token in value.split(",")
    ]
    if any(token.lower() not in ("", "identity") for token in encodings):
        raise httpx.RemoteProtocolError(
            f"the answer has Content-Encoding {printable(', '.join(encodings))}; the tunnel "
            "accepts only identity (it never decompresses an answer)",
            request=request,
        )
    reason = response.extensions.get("reason_phrase", b"")
    head = len(reason) + sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
    if head > MAX_ANSWER_HEAD:
        raise httpx.RemoteProtocolError(
            f"the answer's headers exceed {MAX_ANSWER_HEAD // 1024} KiB", request=request
        )
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_ANSWER_BODY:
        raise httpx.RemoteProtocolError(
            f"the answer's body ({int(length)} bytes) exceeds the "
            f"{MAX_ANSWER_BODY // 1024} KiB cap",
            request=request,
        )


class SSHTunnelTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends every request through ``conn``: the SSH
    server connects to the request's host and port on our behalf, so the
    request is made from the server's point of view.

    Use it like any httpx transport::

        async with httpx.AsyncClient(transport=SSHTunnelTransport(conn)) as client:
            r = await client.get("http://169.254.169.254/latest/meta-data/instance-id")

    Only plain HTTP is supported. Closing the transport closes its channels,
    never ``conn``.

    The server is not trusted, so every answer is bounded: each request is
    sent with ``Accept-Encoding: identity``; an answer with any other
    ``Content-Encoding``, with more than :data:`MAX_ANSWER_HEAD` bytes of
    headers or more than :data:`MAX_ANSWER_BODY` bytes of body is refused
    with an ``httpx.RemoteProtocolError`` (or ``httpx.ReadError``) before more
    is read. With ``timeout`` (seconds), every request through the transport,
    answers read to their end, must be done within ``timeout`` of its first
    request, else ``httpx.ReadTimeout``. Text the server chose (a channel
    refusal reason, say) is escaped in error messages.
    """

    def __init__(self, conn: asyncssh.SSHClientConnection, *, timeout: float | None = None) -> None:
        self._deadline = _Deadline(timeout)
        self._inner = httpx.AsyncHTTPTransport(verify=_UNUSED_SSL_CONTEXT)
        # httpx has no public parameter for an httpcore network backend, so we
        # replace the pool it built; its request/response and error mapping stay.
        self._inner._pool = httpcore.AsyncConnectionPool(network_backend=_ChannelBackend(conn))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "identity"
        self._deadline.start()
        try:
            with anyio.fail_after(self._deadline.remaining()):
                response = await self._inner.handle_async_request(request)
        except TimeoutError:
            raise self._deadline.exceeded(request) from None
        try:
            _refuse_unbounded(response, request)
        except BaseException:
            await response.aclose()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_CappedBody(response.stream, self._deadline, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def metadata_client(
    conn: asyncssh.SSHClientConnection, *, timeout: float = 10.0, base_url: str = METADATA_URL
) -> httpx.AsyncClient:
    """An httpx client for the metadata service as seen from the SSH server's
    side of ``conn``. Use it as an async context manager.

    ``timeout`` (seconds) is one deadline over the client's whole use: every
    request made through it, answers read to their end, must be done within
    ``timeout`` of the first request, else ``httpx.ReadTimeout`` (one proof,
    one deadline, however many requests it takes). Answers are bounded and
    never decompressed, as :class:`SSHTunnelTransport` describes. The client
    never reads proxy settings from the environment."""
    return httpx.AsyncClient(
        transport=SSHTunnelTransport(conn, timeout=timeout),
        base_url=base_url,
        timeout=None,  # no per-phase timeouts: the transport's deadline bounds them all
        trust_env=False,
    )
