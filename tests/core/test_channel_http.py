"""HTTP/1.1 with h11 over SSH channels (cloudvm._channel_http), and the
IMDSv2 proof built on it: one token, both reads at once, channels closed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import anyio
import asyncssh
import pytest

from cloudvm import HostKeyError
from cloudvm._channel_http import ChannelHTTP, ChannelHTTPError, ChannelHTTPTimeout
from cloudvm._http_server import HTTPRequest, HTTPResponse, serve_http
from cloudvm.driverkit import IMDSV2_SECRET_PATH, verify_with_imdsv2
from cloudvm.testing import CancelBy, IMDSv2Service, cancel_at_each_suspension

_SECRET = "s" * 43
Handler = Callable[[HTTPRequest], Awaitable[HTTPResponse]]


class Metadata:
    """A metadata service behind an SSH server that counts its channels."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[HTTPRequest] = []
        self.channels_opened = 0
        self.channels_open = 0
        self.port = 0
        self._changed = anyio.Event()
        self.log: list[tuple[str, bytes]] = []  # ("read" | "write", data), in order

    def _count(self, opened: int, change: int) -> None:
        self.channels_opened += opened
        self.channels_open += change
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()`` holds, checked at every channel open and close."""
        with anyio.fail_after(30):  # generous: the machine may be loaded
            while not done():
                await self._changed.wait()

    async def serve(
        self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        self._count(1, +1)

        async def answer(request: HTTPRequest) -> HTTPResponse:
            self.requests.append(request)
            return await self.handler(request)

        log = self.log

        class Reader:
            async def read(self, size: int) -> bytes:
                data = await reader.read(size)
                log.append(("read", data))
                return data

        class Writer:
            def write(self, data: bytes) -> None:
                log.append(("write", data))
                writer.write(data)

            async def drain(self) -> None:
                await writer.drain()

            def close(self) -> None:
                writer.close()

        try:
            await serve_http(answer, cast(Any, Reader()), cast(Any, Writer()))
        finally:
            self._count(0, -1)

    async def all_closed(self) -> None:
        # The client does not wait for its channels' close to be answered.
        await self.until(lambda: self.channels_open == 0)


class _Server(asyncssh.SSHServer):
    def __init__(self, metadata: Metadata, client_key: asyncssh.SSHKey) -> None:
        self._metadata = metadata
        self._key = client_key

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data == self._key.public_data

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> asyncssh.SSHSocketSessionFactory:
        return self._metadata.serve


@contextlib.asynccontextmanager
async def connected(
    client_key: asyncssh.SSHKey, handler: Handler
) -> AsyncIterator[tuple[Metadata, asyncssh.SSHClientConnection]]:
    metadata = Metadata(handler)
    acceptor = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=lambda: _Server(metadata, client_key),
        encoding=None,
    )
    metadata.port = acceptor.sockets[0].getsockname()[1]
    try:
        async with await asyncssh.connect(
            "127.0.0.1",
            metadata.port,
            username="u",
            client_keys=[client_key],
            known_hosts=None,
            agent_path=None,
            config=None,
        ) as conn:
            yield metadata, conn
    finally:
        acceptor.close()
        await acceptor.wait_closed()


def _imdsv2() -> Handler:
    service = IMDSv2Service("i-1", lambda: {"cloudvm-secret": _SECRET})

    async def handler(request: HTTPRequest) -> HTTPResponse:
        return service(request)

    return handler


async def test_requests_share_a_kept_alive_channel(client_key: asyncssh.SSHKey) -> None:
    async def echo(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, f"{request.method} {request.path}".encode())

    async with connected(client_key, echo) as (metadata, conn):
        async with ChannelHTTP(conn) as http:
            for n in range(3):
                answer = await http.request("GET", f"/x{n}", [("X-Test", "1")])
                assert (answer.status, answer.text()) == (200, f"GET /x{n}")
                assert answer.header("Content-Type") == "text/plain"
        assert metadata.channels_opened == 1
        await metadata.all_closed()
    assert [r.headers["accept-encoding"] for r in metadata.requests] == ["identity"] * 3
    assert [r.headers["host"] for r in metadata.requests] == ["169.254.169.254"] * 3


async def test_a_caller_cannot_ask_for_an_encoding(client_key: asyncssh.SSHKey) -> None:
    async def echo(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, b"ok")

    async with connected(client_key, echo) as (metadata, conn), ChannelHTTP(conn) as http:
        await http.request("GET", "/", [("Accept-Encoding", "gzip")])
    assert metadata.requests[0].headers["accept-encoding"] == "identity"


async def test_the_imdsv2_proof_pipelines_both_reads(client_key: asyncssh.SSHKey) -> None:
    async with connected(client_key, _imdsv2()) as (metadata, conn):
        await verify_with_imdsv2(conn, instance_id="i-1", secret=_SECRET)
        await metadata.all_closed()
    asked = [(r.method, r.path) for r in metadata.requests]
    assert asked == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/instance-id"),
        ("GET", IMDSV2_SECRET_PATH),
    ]
    assert metadata.channels_opened == 1
    tokens = {r.headers["x-aws-ec2-metadata-token"] for r in metadata.requests[1:]}
    assert len(tokens) == 1  # one token for both reads
    # Both GETs had reached the server before it wrote its first answer to
    # a GET: they went out together, not one after the other's answer.
    writes = [i for i, (kind, _) in enumerate(metadata.log) if kind == "write"]
    before_first_get_answer = b"".join(
        data for kind, data in metadata.log[: writes[1]] if kind == "read"
    )
    assert b"GET /latest/meta-data/instance-id " in before_first_get_answer
    assert f"GET {IMDSV2_SECRET_PATH} ".encode() in before_first_get_answer


async def test_pipelined_gets_left_unanswered_go_again(client_key: asyncssh.SSHKey) -> None:
    # A server that closes the channel after each answer ("Connection:
    # close"): the GETs it did not answer are sent again on a new channel.
    async def one_per_channel(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, request.path.encode(), headers={"connection": "close"})

    async with connected(client_key, one_per_channel) as (metadata, conn):
        async with ChannelHTTP(conn) as http:
            answers = await http.get_all(["/a", "/b", "/c"])
        assert [answer.text() for answer in answers] == ["/a", "/b", "/c"]
        assert metadata.channels_opened == 3
        await metadata.all_closed()


async def test_an_error_status_fails_the_proof_without_the_reason(
    client_key: asyncssh.SSHKey,
) -> None:
    async def refuse(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(401, b"\x1b]0;pwned\x07")

    async with connected(client_key, refuse) as (metadata, conn):
        with pytest.raises(HostKeyError, match=r"HTTP 401 to PUT /latest/api/token") as info:
            await verify_with_imdsv2(conn, instance_id="i-1", secret=_SECRET)
        await metadata.all_closed()
    assert "pwned" not in str(info.value)


async def test_a_wrong_secret_fails_after_both_reads(client_key: asyncssh.SSHKey) -> None:
    async with connected(client_key, _imdsv2()) as (_, conn):
        with pytest.raises(HostKeyError):
            await verify_with_imdsv2(conn, instance_id="i-1", secret="t" * 43)
        with pytest.raises(HostKeyError, match="another instance"):
            await verify_with_imdsv2(conn, instance_id="i-2", secret=_SECRET)
        await verify_with_imdsv2(conn, instance_id="i-1", secret=_SECRET)


async def test_one_deadline_over_the_session(client_key: asyncssh.SSHKey) -> None:
    release = anyio.Event()

    async def slow(request: HTTPRequest) -> HTTPResponse:
        await release.wait()
        return HTTPResponse(200, b"late")

    async with connected(client_key, slow) as (metadata, conn):
        with pytest.raises(ChannelHTTPTimeout, match=r"within 0\.3 s"):
            async with ChannelHTTP(conn, timeout=0.3) as http:
                await http.request("GET", "/")
        release.set()
        await metadata.all_closed()


async def test_a_closed_session_refuses_requests(client_key: asyncssh.SSHKey) -> None:
    async def echo(request: HTTPRequest) -> HTTPResponse:
        return HTTPResponse(200, b"ok")

    async with connected(client_key, echo) as (_, conn):
        http = ChannelHTTP(conn)
        http.close()
        with pytest.raises(RuntimeError, match="closed"):
            await http.request("GET", "/")


async def test_a_server_closing_early_is_an_error(client_key: asyncssh.SSHKey) -> None:
    async def hang_up(request: HTTPRequest) -> HTTPResponse:
        raise OSError("gone")  # serve_http closes the channel without answering

    async with connected(client_key, hang_up) as (_, conn), ChannelHTTP(conn) as http:
        with pytest.raises(ChannelHTTPError):
            await http.request("GET", "/")


@pytest.mark.parametrize("by", [CancelBy.TASK, CancelBy.ANYIO])
async def test_a_proof_cancelled_anywhere_leaves_no_channel(
    client_key: asyncssh.SSHKey, by: CancelBy
) -> None:
    async with connected(client_key, _imdsv2()) as (metadata, conn):

        async def operation() -> None:
            await verify_with_imdsv2(conn, instance_id="i-1", secret=_SECRET)

        async def after_each(point: int, completed: bool) -> None:
            await metadata.all_closed()
            assert not conn.is_closed()

        cancelled = await cancel_at_each_suspension(operation, by=by, after_each=after_each)
        assert cancelled >= 3


def _hostile_get(path: str, answer: HTTPResponse) -> Handler:
    """A well-behaved IMDSv2 service, except for its answer to GET ``path``."""
    service = _imdsv2()

    async def handler(request: HTTPRequest) -> HTTPResponse:
        if request.method == "GET" and request.path == path:
            return answer
        return await service(request)

    return handler


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (HTTPResponse(200, bytes(70 * 1024)), "64 KiB"),
        (HTTPResponse(200, b"x", headers={"content-encoding": "gzip"}), "Content-Encoding gzip"),
        (
            HTTPResponse(200, b"x", headers={f"x-pad-{n}": "a" * 1000 for n in range(40)}),
            "headers exceed",
        ),
    ],
    ids=["big-body", "gzip", "huge-headers"],
)
@pytest.mark.parametrize("path", ["/latest/meta-data/instance-id", IMDSV2_SECRET_PATH])
async def test_a_pipelined_answer_beyond_the_caps_fails_the_proof(
    client_key: asyncssh.SSHKey, path: str, answer: HTTPResponse, reason: str
) -> None:
    # Either of the two pipelined reads, the first (whose leftovers the
    # second starts from) or the second, is held to every cap.
    async with connected(client_key, _hostile_get(path, answer)) as (metadata, conn):
        with pytest.raises(HostKeyError, match=reason):
            await verify_with_imdsv2(conn, instance_id="i-1", secret=_SECRET)
        await metadata.all_closed()
