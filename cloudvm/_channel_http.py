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

A channel is kept alive from request to request, and several GETs can be
pipelined on it (:meth:`ChannelHTTP.get_all`: every request in one write,
one round trip for all); requests may also run concurrently, each on a
channel of its own. Fewer channels and fewer writes matter: each SSH packet
sent is one system call, the largest part of the client's cost. Closing a
channel does not wait for the server's close: asyncssh completes it in the
background, or the connection's close does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

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
    """One direct-tcpip channel carrying HTTP/1.1 exchanges, one h11
    connection state per request (so that requests can be pipelined)."""

    def __init__(
        self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._unread = b""  # received past the last answer read
        self._ended = False  # the server closed its side

    def close(self) -> None:
        self._writer.close()

    async def exchange(self, requests: Sequence[h11.Request]) -> list[ChannelAnswer]:
        """Send ``requests`` in one write (pipelined), then read their
        answers in order. Returns the answers read: all of them, or fewer
        when the server ended the channel after an answer (the rest were
        not answered); then :attr:`reusable` is False."""
        exchanges = [h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BUFFER)]
        exchanges += [
            h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD_BUFFER)
            for _ in requests[1:]
        ]
        answers = []
        try:
            wire = b"".join(
                (http.send(request) or b"") + (http.send(h11.EndOfMessage()) or b"")
                for http, request in zip(exchanges, requests, strict=True)
            )
            self._writer.write(wire)
            for http in exchanges:
                answers.append(await self._answer(http))
                if not (http.our_state is h11.DONE and http.their_state is h11.DONE):
                    self._ended = True
                    break
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
        return answers

    @property
    def reusable(self) -> bool:
        """Whether the channel can carry more requests."""
        return not self._ended

    async def _answer(self, http: h11.Connection) -> ChannelAnswer:
        # Read one answer with ``http``, starting with what the previous
        # answer left unread; keep what follows it for the next.
        if self._unread:
            http.receive_data(self._unread)
            self._unread = b""
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
        assert head is not None  # h11 yields a Response before any Data or EndOfMessage
        unread, closed = http.trailing_data
        self._unread = unread
        self._ended = self._ended or closed
        return ChannelAnswer(
            head.status_code,
            tuple((k.decode("ascii").lower(), v.decode("latin-1")) for k, v in head.headers),
            bytes(body),
        )


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

    ``timeout`` (seconds) is one deadline over the session: every request,
    answers read to their end, must be done within
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

    def _request(self, method: str, path: str, headers: Iterable[tuple[str, str]]) -> h11.Request:
        wire_headers = [
            ("Host", self._host if self._port == 80 else f"{self._host}:{self._port}"),
            ("Accept-Encoding", "identity"),
            ("Content-Length", "0"),
            *((k, v) for k, v in headers if k.lower() not in _OURS),
        ]
        try:
            return h11.Request(method=method, target=path, headers=wire_headers)
        except h11.LocalProtocolError as exc:
            raise ValueError(f"cannot send {method} {path!r}: {exc}") from None

    async def request(
        self, method: str, path: str, headers: Iterable[tuple[str, str]] = ()
    ) -> ChannelAnswer:
        """Send ``method`` ``path`` with ``headers`` (plus ``Host``,
        ``Accept-Encoding: identity``, and ``Content-Length: 0``: requests
        carry no body) and return the complete answer, whatever its status.
        A kept-alive channel of the session is reused, else one is opened.

        Raises:
            ChannelHTTPTimeout: the session's deadline passed.
            ChannelHTTPError: the channel was refused or failed, or the
                answer broke HTTP/1.1 or a cap.
            ValueError: ``method``, ``path`` or ``headers`` cannot be sent.
            RuntimeError: the session is closed.
        """
        (answer,) = await self._send([self._request(method, path, headers)])
        return answer

    async def get_all(
        self, paths: Sequence[str], headers: Iterable[tuple[str, str]] = ()
    ) -> list[ChannelAnswer]:
        """GET each of ``paths`` with ``headers``, pipelined: all requests go
        out at once on one channel (one round trip for all), and the answers
        are returned in order. Requests a server left unanswered by ending
        the channel are sent again on another (GET is safe to repeat).
        Raises as :meth:`request`."""
        headers = list(headers)
        pending = [self._request("GET", path, headers) for path in paths]
        answers: list[ChannelAnswer] = []
        while pending:
            got = await self._send(pending)
            answers += got
            pending = pending[len(got) :]
        return answers

    async def _send(self, requests: Sequence[h11.Request]) -> list[ChannelAnswer]:
        # At least one answer, or an error: a channel ended before its first
        # answer raises, so a caller that repeats the rest always progresses.
        try:
            with anyio.fail_after(self._remaining()):
                channel = self._idle.pop() if self._idle else await self._new_channel()
                try:
                    answers = await channel.exchange(requests)
                except BaseException:
                    self._drop(channel)
                    raise
        except ChannelHTTPTimeout:
            raise
        except TimeoutError:
            raise self._timed_out() from None
        if channel.reusable and not self._closed:
            self._idle.append(channel)
        else:
            self._drop(channel)
        return answers

    def _drop(self, channel: _Channel) -> None:
        channel.close()
        if channel in self._open:
            self._open.remove(channel)


# Headers the session sets itself: a caller's value would break its rules.
_OURS = frozenset({"host", "accept-encoding", "content-length", "transfer-encoding"})
