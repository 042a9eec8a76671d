"""HTTP/1.1 through SSH direct-tcpip channels, spoken with h11 alone.

The cheap way to ask an unproven host's metadata service a few questions:
no httpx client, no connection pool, no network backend per host; h11 (a
real HTTP/1.1 parser) frames each request and parses each answer, and this
module keeps the same rules as :class:`cloudvm.driverkit.SSHTunnelTransport`.
The server is hostile until proven, so every answer is bounded (headers
:data:`MAX_ANSWER_HEAD`, body :data:`MAX_ANSWER_BODY`, and every byte read
for one request), sent for with ``Accept-Encoding: identity`` and refused
with any other ``Content-Encoding`` (never decompressed), one deadline bounds
every request of a session together, and text the server chose reaches an
error message only escaped.

Requests may run concurrently: each takes an idle channel or opens one, and
:meth:`ChannelHTTP.open_spare` opens one ahead while another request is in
flight, so that two requests that depend on a first one can both go out as
soon as it is answered. Closing a channel does not wait for the server's
close: asyncssh completes it in the background, or the connection's close
does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import anyio
import asyncssh
import h11

from ._critical import run_critical
from ._text import printable
from ._tunnel import MAX_ANSWER_BODY, MAX_ANSWER_HEAD, escape_reason

__all__ = ["ChannelAnswer", "ChannelHTTP", "ChannelHTTPError", "ChannelHTTPTimeout"]

# The most bytes read off a channel for one request: head, body, chunk
# framing and any 1xx answers before the real one (an endless stream of
# "100 Continue" is cut off here), as the httpx tunnel does.
_MAX_ANSWER_WIRE = MAX_ANSWER_HEAD + MAX_ANSWER_BODY + 16 * 1024
# What asyncssh may buffer for a channel before we read it (its default is 2 MiB).
_CHANNEL_WINDOW = 2 * _MAX_ANSWER_WIRE
_READ_SIZE = 65536
# h11 buffers at most this much of an incomplete head: the status line and
# the headers, so a head beyond MAX_ANSWER_HEAD is refused before it is whole.
_MAX_HEAD_BUFFER = MAX_ANSWER_HEAD + 1024


class ChannelHTTPError(Exception):
    """A request through the channel failed: the channel was refused or
    closed early, the answer broke HTTP/1.1 or a cap. The message is escaped
    (no control characters the server chose)."""


class ChannelHTTPTimeout(ChannelHTTPError, TimeoutError):
    """The session's one deadline passed before every answer was complete."""


@dataclasses.dataclass(frozen=True)
class ChannelAnswer:
    """One complete answer: status, headers (names in lower case, values
    decoded as Latin-1, in order) and the whole body (at most
    :data:`MAX_ANSWER_BODY` bytes)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def text(self) -> str:
        """The body decoded as UTF-8, invalid bytes replaced: the server does
        not choose the codec we run on its bytes."""
        return self.body.decode("utf-8", errors="replace")


class _Channel:
    """One direct-tcpip channel and the h11 state of its HTTP/1.1 exchange."""

    def __init__(
        self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BUFFER)

    def close(self) -> None:
        self._writer.close()

    async def exchange(self, request: h11.Request) -> tuple[ChannelAnswer, bool]:
        """Send ``request``, read its answer; return it and whether the
        channel can carry another request."""
        http = self._http
        try:
            self._writer.write(http.send(request) + (http.send(h11.EndOfMessage()) or b""))
            budget = _MAX_ANSWER_WIRE
            head: h11.Response | None = None
            body = bytearray()
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    if budget <= 0:
                        raise ChannelHTTPError(
                            f"the answer exceeds {_MAX_ANSWER_WIRE // 1024} KiB (headers and "
                            "body); the tunnel reads no more"
                        )
                    data = await self._reader.read(min(_READ_SIZE, budget))
                    budget -= len(data)
                    http.receive_data(data)
                elif isinstance(event, h11.Response):
                    _refuse_unbounded(event)
                    head = event
                elif isinstance(event, h11.Data):
                    if len(body) + len(event.data) > MAX_ANSWER_BODY:
                        raise ChannelHTTPError(
                            f"the answer's body exceeds the {MAX_ANSWER_BODY // 1024} KiB cap; "
                            "the tunnel reads no more"
                        )
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise ChannelHTTPError("the server closed the channel before answering")
                # h11.InformationalResponse: skipped, within the wire budget
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:  # h11's "receive buffer too long"
                raise ChannelHTTPError(
                    f"the answer's headers exceed {MAX_ANSWER_HEAD // 1024} KiB"
                ) from None
            raise ChannelHTTPError(
                f"the answer is not valid HTTP/1.1: {printable(str(exc))}"
            ) from None
        except h11.LocalProtocolError as exc:
            raise ChannelHTTPError(f"cannot send the request: {exc}") from None
        except asyncssh.Error as exc:
            raise ChannelHTTPError(f"the channel failed: {escape_reason(exc)}") from None
        except OSError as exc:
            raise ChannelHTTPError(f"the channel failed: {printable(str(exc))}") from None
        assert head is not None  # h11 yields a Response before any Data or EndOfMessage
        answer = ChannelAnswer(
            head.status_code,
            tuple((k.decode("ascii").lower(), v.decode("latin-1")) for k, v in head.headers),
            bytes(body),
        )
        reusable = http.our_state is h11.DONE and http.their_state is h11.DONE
        if reusable:
            http.start_next_cycle()
        return answer, reusable


def _refuse_unbounded(head: h11.Response) -> None:
    # Raise unless the answer's head promises a bounded, uncompressed body.
    size = len(head.reason)
    encodings: list[str] = []
    length: bytes | None = None
    for name, value in head.headers:
        size += len(name) + len(value) + 4
        if name == b"content-encoding":
            encodings += [token.strip() for token in value.decode("latin-1").split(",")]
        elif name == b"content-length":
            length = value
    if any(token.lower() not in ("", "identity") for token in encodings):
        raise ChannelHTTPError(
            f"the answer has Content-Encoding {printable(', '.join(encodings))}; the tunnel "
            "accepts only identity (it never decompresses an answer)"
        )
    if size > MAX_ANSWER_HEAD:
        raise ChannelHTTPError(f"the answer's headers exceed {MAX_ANSWER_HEAD // 1024} KiB")
    # h11 has checked that Content-Length is a number.
    if length is not None and int(length) > MAX_ANSWER_BODY:
        raise ChannelHTTPError(
            f"the answer's body ({int(length)} bytes) exceeds the {MAX_ANSWER_BODY // 1024} KiB cap"
        )


class ChannelHTTP:
    """HTTP/1.1 requests to ``host``:``port`` as seen from the SSH server's
    side of ``conn``, each through a direct-tcpip channel; an async context
    manager (leaving it closes every channel, never ``conn``).

    ``timeout`` (seconds) is one deadline over the session: every request
    and :meth:`open_spare`, answers read to their end, must be done within
    ``timeout`` of the first of them, else :class:`ChannelHTTPTimeout`.
    Answers are bounded and never decompressed (see the module's notes).
    """

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        *,
        host: str = "169.254.169.254",
        port: int = 80,
        timeout: float = 10.0,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._conn = conn
        self._host = host
        self._port = port
        self._timeout = timeout
        self._deadline: float | None = None
        self._idle: list[_Channel] = []
        self._open: list[_Channel] = []
        self._closed = False

    async def __aenter__(self) -> ChannelHTTP:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every channel (without waiting for the server's close);
        later requests raise RuntimeError. Synchronous, so that no
        cancellation can stop it halfway."""
        self._closed = True
        channels, self._open, self._idle = self._open, [], []
        for channel in channels:
            channel.close()

    def _remaining(self) -> float:
        if self._deadline is None:
            self._deadline = anyio.current_time() + self._timeout
        return max(0.0, self._deadline - anyio.current_time())

    def _timed_out(self) -> ChannelHTTPTimeout:
        return ChannelHTTPTimeout(
            f"no complete answer within {self._timeout:g} s "
            "(one deadline bounds every request through this tunnel)"
        )

    async def _new_channel(self) -> _Channel:
        if self._closed:
            raise RuntimeError("this ChannelHTTP is closed")
        remaining = self._remaining()

        async def open_channel() -> tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]:
            with anyio.fail_after(remaining):
                return await self._conn.open_connection(
                    self._host, self._port, window=_CHANNEL_WINDOW
                )

        async def close_opened(
            pair: tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]],
        ) -> None:
            pair[1].close()

        try:
            # asyncssh does not close a channel whose open was cancelled: it
            # opens anyway when the server confirms, and stays open. So the
            # open runs to its end (within the deadline) and a cancelled
            # caller closes what it opened.
            reader, writer = await run_critical(open_channel, rollback=close_opened)
        except (OSError, asyncssh.Error) as exc:
            if isinstance(exc, TimeoutError):
                raise
            if isinstance(exc, asyncssh.Error):
                escape_reason(exc)  # the server chose this text
            raise ChannelHTTPError(
                f"the SSH server refused a channel to {self._host}:{self._port}: "
                f"{printable(str(exc))}"
            ) from None
        channel = _Channel(reader, writer)
        if self._closed:  # closed while the channel opened
            channel.close()
            raise RuntimeError("this ChannelHTTP is closed")
        self._open.append(channel)
        return channel

    async def open_spare(self) -> None:
        """Open one channel ahead of need, for a request to come.

        Raises ChannelHTTPError / ChannelHTTPTimeout as :meth:`request`."""
        try:
            with anyio.fail_after(self._remaining()):
                channel = await self._new_channel()
        except TimeoutError:
            raise self._timed_out() from None
        self._idle.append(channel)

    async def request(
        self, method: str, path: str, headers: Iterable[tuple[str, str]] = ()
    ) -> ChannelAnswer:
        """Send ``method`` ``path`` with ``headers`` (plus ``Host``,
        ``Accept-Encoding: identity``, and ``Content-Length: 0``: requests
        carry no body) and return the complete answer, whatever its status.

        Raises:
            ChannelHTTPTimeout: the session's deadline passed.
            ChannelHTTPError: the channel was refused or failed, or the
                answer broke HTTP/1.1 or a cap.
            RuntimeError: the session is closed.
        """
        wire_headers = [
            ("Host", self._host if self._port == 80 else f"{self._host}:{self._port}"),
            ("Accept-Encoding", "identity"),
            ("Content-Length", "0"),
            *((k, v) for k, v in headers if k.lower() not in _OURS),
        ]
        try:
            request = h11.Request(method=method, target=path, headers=wire_headers)
        except h11.LocalProtocolError as exc:
            raise ValueError(f"cannot send {method} {path!r}: {exc}") from None
        try:
            with anyio.fail_after(self._remaining()):
                channel = self._idle.pop() if self._idle else await self._new_channel()
                try:
                    answer, reusable = await channel.exchange(request)
                except BaseException:
                    self._drop(channel)
                    raise
        except ChannelHTTPTimeout:
            raise
        except TimeoutError:
            raise self._timed_out() from None
        if reusable and not self._closed:
            self._idle.append(channel)
        else:
            self._drop(channel)
        return answer

    def _drop(self, channel: _Channel) -> None:
        channel.close()
        if channel in self._open:
            self._open.remove(channel)


# Headers the session sets itself: a caller's value would break its rules.
_OURS = frozenset({"host", "accept-encoding", "content-length", "transfer-encoding"})
