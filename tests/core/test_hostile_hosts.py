"""Verification against SSH servers that are not the instance and fight back.

Until it is proven, a host chooses every byte of its answers: a gzip bomb,
a body that never ends, headers without end, a trickle that never finishes,
escape sequences in a channel refusal. Each must fail the proof quickly,
with little memory, and without echoing its text raw.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import asyncssh
import h11
import pytest

import cloudvm
from cloudvm._http_server import HTTPHandler, HTTPRequest, HTTPResponse, serve_http
from cloudvm._ssh_server import InstanceSSHServer
from cloudvm._text import has_control_chars
from cloudvm.driverkit import check_secret, metadata_client, metadata_get, verify_with_imdsv2

Sender = Callable[[h11.Event], Awaitable[None]]
#: How a host answers one request (its head already read): frames sent with h11.
Respond = Callable[[Sender], Awaitable[None]]
Reader = asyncssh.SSHReader[bytes]
Writer = asyncssh.SSHWriter[bytes]


@functools.cache
def _gzip_bomb_body(mib: int = 256) -> bytes:
    """gzip of ``mib`` MiB of zeros (about 0.26 MB for 256 MiB), built from one
    compressed MiB repeated: after a full flush, zlib writes each further MiB
    of zeros as the same bytes. (gzip.compress would take seconds.)"""
    chunk = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    first = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    final_block = packer.flush()[:-8]  # without its trailer (crc and size of 2 MiB)
    trailer = struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)
    return first + again * (mib - 1) + final_block + trailer


_HOSTILE_TEXT = "\x1b]0;pwned\x07\x9b31m"
_SECRET = "s" * 43


class HostileHost:
    """What a hostile host did: bytes its channels sent, commands it was
    asked to run (none should ever run)."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.sent = 0
        self.address = ""
        self.port = 0


class _HostileSSHServer(InstanceSSHServer):
    """Any login with the client key; every direct-tcpip channel goes to ``serve``."""

    def __init__(
        self,
        client_key: asyncssh.SSHKey,
        serve: Callable[[Reader, Writer], Awaitable[None]] | None,
        refusal: str,
        goodbye: str,
    ) -> None:
        super().__init__(username=None, authorized_keys=[client_key], metadata=None)
        self._serve = serve
        self._refusal = refusal
        self._goodbye = goodbye

    def begin_auth(self, username: str) -> bool:
        if self._goodbye:
            raise asyncssh.DisconnectError(asyncssh.DISC_BY_APPLICATION, self._goodbye)
        return super().begin_auth(username)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> asyncssh.SSHSocketSessionFactory:
        if self._serve is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, self._refusal)
        return self._serve


@contextlib.asynccontextmanager
async def hostile_host(
    client_key: asyncssh.SSHKey,
    *,
    respond: Respond | None = None,
    handler: HTTPHandler | None = None,
    refusal: str = "",
    goodbye: str = "",
) -> AsyncIterator[HostileHost]:
    """A host answering each metadata request with ``respond`` (raw h11
    frames), with ``handler`` (a well-formed HTTP answer), or refusing the
    channel with ``refusal`` as the reason; with ``goodbye``, one that
    disconnects with that reason before login."""
    host = HostileHost()

    async def framed(reader: Reader, writer: Writer) -> None:
        assert respond is not None
        conn = h11.Connection(h11.SERVER)

        async def send(event: h11.Event) -> None:
            data = conn.send(event) or b""
            writer.write(data)
            host.sent += len(data)
            await writer.drain()

        try:
            while not isinstance(event := conn.next_event(), h11.Request):
                if event is not h11.NEED_DATA:
                    return
                conn.receive_data(await reader.read(65536))
            await respond(send)
        except (OSError, asyncssh.Error):
            pass  # the client gave up on us, as it should
        finally:
            writer.close()

    async def well_formed(reader: Reader, writer: Writer) -> None:
        assert handler is not None
        await serve_http(handler, reader, writer)

    serve = framed if respond else well_formed if handler else None

    async def record(session: asyncssh.SSHServerProcess[bytes]) -> None:
        host.commands.append(session.command or "")
        session.exit(0)

    acceptor = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=lambda: _HostileSSHServer(client_key, serve, refusal, goodbye),
        process_factory=record,
        encoding=None,
    )
    host.port = acceptor.sockets[0].getsockname()[1]
    host.address = f"127.0.0.1:{host.port}"
    try:
        yield host
    finally:
        acceptor.close()
        await acceptor.wait_closed()


async def _gzip_bomb(send: Sender) -> None:
    bomb = _gzip_bomb_body()
    headers = [("content-encoding", "gzip"), ("content-length", str(len(bomb)))]
    await send(h11.Response(status_code=200, headers=headers))
    await send(h11.Data(data=bomb))
    await send(h11.EndOfMessage())


async def _endless_body(send: Sender) -> None:
    await send(h11.Response(status_code=200, headers=[]))  # chunked, no length
    while True:
        await send(h11.Data(data=bytes(65536)))


async def _endless_informational(send: Sender) -> None:
    while True:
        await send(h11.InformationalResponse(status_code=100, headers=[("x-pad", "a" * 1000)]))


async def _huge_headers(send: Sender) -> None:
    headers = [(f"x-pad-{n}", "a" * 1000) for n in range(40)]  # 40 KB of headers
    await send(h11.Response(status_code=200, headers=[*headers, ("content-length", "0")]))
    await send(h11.EndOfMessage())


async def _huge_content_length(send: Sender) -> None:
    await send(h11.Response(status_code=200, headers=[("content-length", str(1 << 30))]))
    while True:
        await send(h11.Data(data=bytes(65536)))


async def _trickle(send: Sender) -> None:
    # Each byte comes well within any per-read timeout; the answer never ends.
    await send(h11.Response(status_code=200, headers=[]))
    while True:
        await send(h11.Data(data=b"s"))
        await anyio.sleep(0.01)


class ImdsTarget:
    """An ExecutorTarget proven as EC2, loopback and the fake are."""

    remote_user = "u"

    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        self.address = address
        self._timeout = timeout

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        if conn is None:
            raise NotImplementedError
        await verify_with_imdsv2(
            conn, instance_id="i-1", secret=_SECRET, timeout=self._timeout, who="i-1"
        )

    def __str__(self) -> str:
        return "i-1"


class PlainGetTarget(ImdsTarget):
    """Proven as the GCE and Azure drivers do: one GET with metadata_get."""

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        assert conn is not None
        answer = await metadata_get(
            conn, "/secret", [("Metadata-Flavor", "Google")], timeout=self._timeout, who="i-1"
        )
        check_secret(answer.body, _SECRET)


TARGETS = [ImdsTarget, PlainGetTarget]


async def _prove(
    host: HostileHost, client_key: asyncssh.SSHKey, target_class: type[ImdsTarget], **kw: float
) -> cloudvm.HostKeyError:
    """Run a command on ``host`` through an executor; return the HostKeyError."""
    target = target_class(host.address, **kw)
    with anyio.fail_after(60):  # a hang fails the test rather than the run
        async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
            with pytest.raises(cloudvm.HostKeyError) as info:
                await ex.execute("touch pwned")
    assert host.commands == []
    return info.value


def test_the_gzip_bomb_is_one() -> None:
    bomb = _gzip_bomb_body(16)
    assert gzip.decompress(bomb) == bytes(16 << 20)
    assert len(_gzip_bomb_body()) < 300_000


@pytest.mark.parametrize("target_class", TARGETS)
async def test_a_gzip_bomb_is_refused_without_inflating_it(
    client_key: asyncssh.SSHKey, target_class: type[ImdsTarget]
) -> None:
    async with hostile_host(client_key, respond=_gzip_bomb) as host:
        tracemalloc.start()
        try:
            error = await _prove(host, client_key, target_class)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert "Content-Encoding" in str(error)
    assert "gzip" in str(error)
    assert peak < 32 * 1024 * 1024  # the bomb inflates to 256 MiB
    assert host.sent < 2 * 1024 * 1024  # and the host could not push much of it


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (_endless_body, "64 KiB"),
        (_huge_content_length, "64 KiB"),
        (_endless_informational, "KiB"),
        (_huge_headers, "headers"),
    ],
    ids=["endless-body", "huge-content-length", "endless-1xx", "huge-headers"],
)
@pytest.mark.parametrize("target_class", TARGETS)
async def test_an_answer_beyond_the_caps_is_cut(
    client_key: asyncssh.SSHKey,
    target_class: type[ImdsTarget],
    answer: Respond,
    reason: str,
) -> None:
    async with hostile_host(client_key, respond=answer) as host:
        error = await _prove(host, client_key, target_class)
    assert reason in str(error)
    # the channel was closed after a little: the host could not push more
    # than the channel's window beyond what was read
    assert host.sent < 2 * 1024 * 1024


@pytest.mark.parametrize("target_class", TARGETS)
async def test_one_deadline_bounds_the_whole_proof(
    client_key: asyncssh.SSHKey, target_class: type[ImdsTarget]
) -> None:
    # Every read succeeds well within a per-read timeout; only a deadline
    # over the whole proof ends it.
    async with hostile_host(client_key, respond=_trickle) as host:
        error = await _prove(host, client_key, target_class, timeout=0.5)
    assert "0.5" in str(error)
    assert "within" in str(error)


@pytest.mark.parametrize("target_class", TARGETS)
async def test_a_channel_refusal_reason_is_never_echoed_raw(
    client_key: asyncssh.SSHKey, target_class: type[ImdsTarget]
) -> None:
    async with hostile_host(client_key, refusal=_HOSTILE_TEXT) as host:
        error = await _prove(host, client_key, target_class)
    assert "\\x1b]0;pwned\\x07\\x9b31m" in str(error)
    for exc in _chain(error):
        assert not has_control_chars(str(exc)), repr(exc)


async def test_a_disconnect_reason_is_never_echoed_raw(client_key: asyncssh.SSHKey) -> None:
    async with hostile_host(client_key, goodbye=_HOSTILE_TEXT) as host:
        target = ImdsTarget(host.address)
        async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
            with pytest.raises(asyncssh.DisconnectError) as info:
                await ex.execute("true")
    assert "\\x1b]0;pwned\\x07\\x9b31m" in str(info.value)
    for exc in _chain(info.value):
        assert not has_control_chars(str(exc)), repr(exc)


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
    return seen


async def test_the_tunnel_asks_for_no_encoding(client_key: asyncssh.SSHKey) -> None:
    asked: list[HTTPRequest] = []

    def handler(request: HTTPRequest) -> HTTPResponse:
        asked.append(request)
        return HTTPResponse(200, _SECRET.encode())

    async with (
        hostile_host(client_key, handler=handler) as host,
        await asyncssh.connect(
            "127.0.0.1",
            host.port,
            username="u",
            client_keys=[client_key],
            known_hosts=None,
            agent_path=None,
            config=None,
        ) as conn,
        metadata_client(conn) as client,
    ):
        response = await client.get("/secret", headers={"Accept-Encoding": "gzip, br"})
        assert response.content == _SECRET.encode()
    assert [r.headers["accept-encoding"] for r in asked] == ["identity"]


@pytest.mark.parametrize(
    "encoding", ["gzip", "deflate", "br", "zstd", "x-custom", "identity, gzip"]
)
async def test_any_content_encoding_but_identity_is_refused(
    client_key: asyncssh.SSHKey, encoding: str
) -> None:
    answer = HTTPResponse(200, b"x", headers={"content-encoding": encoding})
    async with hostile_host(client_key, handler=lambda _: answer) as host:
        error = await _prove(host, client_key, PlainGetTarget)
    assert "Content-Encoding" in str(error)


async def test_identity_encoding_and_small_answers_pass(client_key: asyncssh.SSHKey) -> None:
    body = _SECRET.encode() + b" " * (64 * 1024 - len(_SECRET))  # exactly the cap
    answer = HTTPResponse(200, body, headers={"content-encoding": "identity"})
    async with hostile_host(client_key, handler=lambda _: answer) as host:
        target = PlainGetTarget(host.address)
        async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
            assert await ex.execute("echo ok") == (b"", b"")
    assert host.commands == ["echo ok"]
