"""HTTP through SSH channels: httpx over asyncssh direct-tcpip."""

from __future__ import annotations

import http.server
import threading
from collections.abc import AsyncIterator, Iterator

import asyncssh
import httpx
import pytest

from cloudvm.driverkit import SSHTunnelTransport, imdsv2_get, metadata_client
from cloudvm.testing import IMDSv2Service, SSHTestServer

from ..conftest import OpenSSHServer


@pytest.fixture
async def imds_server(client_key: asyncssh.SSHKey) -> AsyncIterator[SSHTestServer]:
    tags = {"role": "worker", "cloudvm-secret": "s3cret"}
    async with SSHTestServer(
        authorized_keys=[client_key], metadata=IMDSv2Service("i-123", lambda: tags)
    ) as server:
        yield server


async def _connect(server: SSHTestServer, key: asyncssh.SSHKey) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        server.port,
        username="u",
        client_keys=[key],
        known_hosts=None,
        agent_path=None,
        config=None,
    )


async def test_imdsv2_through_the_tunnel(
    imds_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    async with await _connect(imds_server, client_key) as conn, metadata_client(conn) as client:
        assert await imdsv2_get(client, "/latest/meta-data/instance-id") == "i-123"
        assert await imdsv2_get(client, "/latest/meta-data/tags/instance/role") == "worker"
        keys = await imdsv2_get(client, "/latest/meta-data/tags/instance")
        assert keys.split("\n") == ["cloudvm-secret", "role"]
    assert imds_server.commands == []  # no command was needed to ask


async def test_imdsv2_refuses_requests_without_a_token(
    imds_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    async with await _connect(imds_server, client_key) as conn, metadata_client(conn) as client:
        response = await client.get("/latest/meta-data/instance-id")
        assert response.status_code == 401
        with pytest.raises(httpx.HTTPStatusError):
            await imdsv2_get(client, "/latest/meta-data/tags/instance/missing")


async def test_channels_elsewhere_are_refused(
    imds_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    async with await _connect(imds_server, client_key) as conn:
        transport = SSHTunnelTransport(conn)
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            with pytest.raises(httpx.ConnectError, match="refused a channel"):
                await client.get("http://10.1.2.3:8080/")


@pytest.fixture
def local_http_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"you asked for {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


async def test_tunnel_through_openssh_to_a_real_http_server(
    openssh_server: OpenSSHServer, client_key: asyncssh.SSHKey, local_http_server: int
) -> None:
    # OpenSSH's sshd (AllowTcpForwarding local) opens the TCP connection for us.
    async with (
        await asyncssh.connect(
            "127.0.0.1",
            openssh_server.port,
            username=openssh_server.user,
            client_keys=[client_key],
            known_hosts=None,
            agent_path=None,
            config=None,
        ) as conn,
        httpx.AsyncClient(transport=SSHTunnelTransport(conn), trust_env=False) as client,
    ):
        for n in range(3):  # keep-alive reuses the channel
            response = await client.get(f"http://127.0.0.1:{local_http_server}/x{n}")
            assert response.text == f"you asked for /x{n}"
