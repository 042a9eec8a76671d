"""Host-key verification through the SSH connection to Azure IMDS."""

from __future__ import annotations

import json
import traceback

import anyio
import asyncssh
import cloudvm_azure
import pytest
from azure_fake_arm import VM, FakeARM
from azure_imds import AzureIMDS
from test_azure_lifecycle import IMAGE, SMALL, assert_nothing_left

import cloudvm
from cloudvm import HostKeyError, InitCommand, Instance
from cloudvm.driverkit import SECRET_TAG
from cloudvm.testing import HTTPRequest, HTTPResponse, RedirectedTarget, SSHTestServer


async def _run_true(server: SSHTestServer, instance: Instance, key: asyncssh.SSHKey) -> None:
    executor = cloudvm.SSHExecutor(RedirectedTarget(instance, server.address), signers=[key])
    try:
        await executor.execute("true")
    finally:
        await executor.close()


async def test_the_right_secret_passes(arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), key)
    imds = AzureIMDS(lambda: arm.get(VM, instance.id))
    async with SSHTestServer(authorized_keys=[key], metadata=imds) as server:
        await _run_true(server, instance, key)
        assert server.commands == ["true"]
    (request,) = imds.requests
    assert request.path == "/metadata/instance"
    assert request.query == "api-version=2021-02-01"
    assert request.headers["metadata"] == "true"
    await instance.destroy()
    assert_nothing_left(arm)


async def test_a_listed_instance_verifies_too(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    created = await iset.create(SMALL, IMAGE, {}, InitCommand(""), key)
    (listed,) = await iset.instances()
    async with SSHTestServer(
        authorized_keys=[key], metadata=AzureIMDS(lambda: arm.get(VM, created.id))
    ) as server:
        await _run_true(server, listed, key)
    await created.destroy()
    assert_nothing_left(arm)


async def test_a_wrong_secret_fails_before_any_command(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), key)

    def impostor() -> dict[str, object] | None:
        vm = arm.get(VM, instance.id)
        assert vm is not None
        return {**vm, "tags": {**vm["tags"], SECRET_TAG: "not-the-secret"}}

    async with SSHTestServer(authorized_keys=[key], metadata=AzureIMDS(impostor)) as server:
        with pytest.raises(HostKeyError):
            await _run_true(server, instance, key)
        assert server.commands == []
    await instance.destroy()
    assert_nothing_left(arm)


async def test_a_host_without_metadata_fails_before_any_command(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), key)
    async with SSHTestServer(authorized_keys=[key], metadata=AzureIMDS(lambda: None)) as server:
        with pytest.raises(HostKeyError):
            await _run_true(server, instance, key)
        assert server.commands == []
    await instance.destroy()
    assert_nothing_left(arm)


async def test_verification_needs_a_connection(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    with pytest.raises(NotImplementedError):
        await instance.verify_host_key(asyncssh.generate_private_key("ssh-ed25519"), None)
    await instance.destroy()
    assert_nothing_left(arm)


def test_imds_refuses_requests_without_the_metadata_header() -> None:
    imds = AzureIMDS(lambda: {"name": "vm", "tags": {SECRET_TAG: "s"}})
    query = "api-version=2021-02-01"
    refused = imds(HTTPRequest("GET", "/metadata/instance", query, {}, b""))
    assert refused.status == 400
    assert b"metadata header" in refused.body
    no_version = imds(HTTPRequest("GET", "/metadata/instance", "", {"metadata": "true"}, b""))
    assert no_version.status == 400
    ok = imds(HTTPRequest("GET", "/metadata/instance", query, {"metadata": "true"}, b""))
    assert ok.status == 200
    assert b'"tagsList": [{"name": "cloudvm-secret", "value": "s"}]' in ok.body


# Text an unproven host chooses: an OSC 52 clipboard write, a C1 CSI, a bidi override.
HOSTILE = "\x1b]52;c;aGk=\x07\x9b31m\u202e no"


def _raw_hostile_text(error: BaseException) -> list[str]:
    """The hostile characters found raw in ``error`` as a traceback shows it
    (its chain included)."""
    shown = "".join(traceback.format_exception(error))
    return [c for c in "\x1b\x07\x9b\u202e" if c in shown]


class _Hostile:
    """An IMDS that answers as an impostor chooses (status, headers, body),
    or, with ``stall``, never answers at all."""

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"{}",
        headers: dict[str, str] | None = None,
        *,
        stall: bool = False,
    ) -> None:
        self._answer = HTTPResponse(status, body, headers or {}, "application/json")
        self._stall = stall
        self.asked = anyio.Event()
        self.released = anyio.Event()

    async def __call__(self, request: HTTPRequest) -> HTTPResponse:
        self.asked.set()
        if self._stall:
            await self.released.wait()
        return self._answer


def _document(secret: str, padding: int = 0) -> bytes:
    tags = [{"name": SECRET_TAG, "value": secret}, {"name": "pad", "value": "x" * padding}]
    return json.dumps({"compute": {"tagsList": tags}}).encode()


@pytest.mark.parametrize(
    ("imds", "says"),
    [
        pytest.param(_Hostile(403, HOSTILE.encode()), "403", id="status"),
        pytest.param(_Hostile(200, HOSTILE.encode()), "JSON", id="not-json"),
        pytest.param(_Hostile(200, _document(HOSTILE)), "wrong instance secret", id="secret"),
        pytest.param(_Hostile(200, _document("s", padding=70_000)), "KiB", id="too-big"),
        pytest.param(
            _Hostile(200, _document("s"), {"Content-Encoding": "gzip"}),
            "Content-Encoding",
            id="gzip",
        ),
        pytest.param(
            _Hostile(200, b"[" + json.dumps(HOSTILE).encode() + b"]"), "no instance", id="list"
        ),
        pytest.param(_Hostile(200, b"[" * 60_000), "is not JSON", id="nested-beyond-the-parser"),
    ],
)
async def test_a_hostile_imds_is_refused_with_no_raw_text_of_its_own(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet, imds: _Hostile, says: str
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), key)
    async with SSHTestServer(authorized_keys=[key], metadata=imds) as server:
        with pytest.raises(HostKeyError) as caught:
            await _run_true(server, instance, key)
        assert server.commands == []
    assert _raw_hostile_text(caught.value) == []
    assert says in str(caught.value)
    await instance.destroy()
    assert_nothing_left(arm)


async def test_one_deadline_bounds_the_whole_metadata_exchange(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), key)
    imds = _Hostile(stall=True)
    monkeypatch.setattr(cloudvm_azure._verification, "IMDS_TIMEOUT", 0.5)
    async with SSHTestServer(authorized_keys=[key], metadata=imds) as server:
        async with await asyncssh.connect(
            "127.0.0.1", server.port, known_hosts=None, username="u", client_keys=[key]
        ) as conn:
            with anyio.fail_after(30):  # a bug would hang here
                with pytest.raises(HostKeyError, match=r"within 0\.5 s"):
                    await instance.verify_host_key(server.host_key, conn)
        assert imds.asked.is_set()
        imds.released.set()
    await instance.destroy()
    assert_nothing_left(arm)


class _Refusing(asyncssh.SSHServer):
    """Lets anyone in, then refuses every channel with a hostile reason."""

    def begin_auth(self, username: str) -> bool:
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, HOSTILE)


async def test_a_hostile_channel_refusal_reaches_the_error_only_escaped(
    arm: FakeARM, iset: cloudvm_azure.AzureInstanceSet
) -> None:
    instance = await iset.create(SMALL, IMAGE, {}, InitCommand(""), None)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(_Refusing, "127.0.0.1", 0, server_host_keys=[host_key])
    try:
        port = server.sockets[0].getsockname()[1]
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, username="u", client_keys=None
        ) as conn:
            with pytest.raises(HostKeyError) as caught:
                await instance.verify_host_key(host_key, conn)
    finally:
        server.close()
        await server.wait_closed()
    assert _raw_hostile_text(caught.value) == []
    assert "\\x1b" in str(caught.value)  # escaped, not dropped: still worth reading
    await instance.destroy()
    assert_nothing_left(arm)
