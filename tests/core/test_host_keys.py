"""The executor's host-key flow: verify before any command, remember only what passed."""

from __future__ import annotations

from typing import Any

import anyio
import asyncssh
import pytest

import cloudvm
from cloudvm._text import has_control_chars
from cloudvm.testing import SSHTestServer

from ..support import KnownKeyTarget, wait_until


async def test_failed_verification_runs_no_command_and_closes(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    target = KnownKeyTarget(ssh_server.address, "u", key=None)  # accepts no key
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        with pytest.raises(cloudvm.HostKeyError):
            await ex.execute("touch pwned")
        await wait_until(lambda: not ssh_server.open_connections)
    assert ssh_server.commands == []
    assert not (ssh_server.workdir / "pwned").exists()


async def test_man_in_the_middle_key_is_rejected(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    # The target expects the real instance's key; this server has another.
    real_instance_key = asyncssh.generate_private_key("ssh-ed25519")
    target = KnownKeyTarget(ssh_server.address, "u", real_instance_key)
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        with pytest.raises(cloudvm.HostKeyError):
            await ex.execute("true")
    assert target.verified == [ssh_server.host_key.public_data]
    assert ssh_server.commands == []


async def test_every_new_connection_is_verified_even_with_a_known_key(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    target = KnownKeyTarget(ssh_server.address, "u", ssh_server.host_key)
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        await ex.execute("true")
        ssh_server.drop_connections()
        await wait_until(lambda: not ssh_server.open_connections)
        await ex.execute("true")
    assert ssh_server.connection_count == 2
    assert target.verified == [ssh_server.host_key.public_data] * 2


async def test_a_key_that_passed_once_earns_no_trust_for_a_later_connection(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    # The address is reused by another instance built from the same image:
    # same host key, but it cannot prove it is this target.
    class ProvesOnce(KnownKeyTarget):
        async def verify_host_key(
            self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
        ) -> None:
            await super().verify_host_key(key, conn)
            if len(self.verified) > 1:
                raise cloudvm.HostKeyError("the metadata service gave another secret")

    target = ProvesOnce(ssh_server.address, "u", ssh_server.host_key)
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        await ex.execute("echo first")
        ssh_server.drop_connections()
        await wait_until(lambda: not ssh_server.open_connections)
        with pytest.raises(cloudvm.HostKeyError):
            await ex.execute("touch pwned")
    assert ssh_server.commands == ["echo first"]
    assert not (ssh_server.workdir / "pwned").exists()


async def test_changed_key_is_verified_again(client_key: asyncssh.SSHKey) -> None:
    async with (
        SSHTestServer(authorized_keys=[client_key]) as first,
        SSHTestServer(authorized_keys=[client_key]) as second,
    ):
        target = KnownKeyTarget(first.address, "u", first.host_key)
        async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
            await ex.execute("echo one")
            # The instance "moved" and now presents another key: it must be
            # proven again, and here the proof fails.
            target.address = second.address
            with pytest.raises(cloudvm.HostKeyError):
                await ex.execute("echo two")
        assert target.verified == [first.host_key.public_data, second.host_key.public_data]
        assert second.commands == []


async def test_concurrent_callers_share_one_connection_attempt(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    target = KnownKeyTarget(ssh_server.address, "u", ssh_server.host_key)
    async with (
        cloudvm.SSHExecutor(target, signers=[client_key]) as ex,
        anyio.create_task_group() as tg,
    ):
        for n in range(20):
            tg.start_soon(ex.execute, f"echo {n}")
    assert ssh_server.connection_count == 1
    assert len(target.verified) == 1


async def test_concurrent_callers_share_a_failed_verification(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    target = KnownKeyTarget(ssh_server.address, "u", key=None)
    failures: list[BaseException] = []

    async def run() -> None:
        try:
            await ex.execute("true")
        except cloudvm.HostKeyError as exc:
            failures.append(exc)

    async with (
        cloudvm.SSHExecutor(target, signers=[client_key]) as ex,
        anyio.create_task_group() as tg,
    ):
        for _ in range(10):
            tg.start_soon(run)
    assert len(failures) == 10
    assert ssh_server.connection_count == 1
    assert ssh_server.commands == []


async def test_unverifiable_target_is_refused_by_default(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    target = KnownKeyTarget(ssh_server.address, "u", None, error=NotImplementedError())
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        with pytest.raises(cloudvm.HostKeyError, match="trust_on_first_use"):
            await ex.execute("true")
    assert ssh_server.commands == []


async def test_trust_on_first_use_accepts_the_first_key_only(client_key: asyncssh.SSHKey) -> None:
    async with (
        SSHTestServer(authorized_keys=[client_key]) as first,
        SSHTestServer(authorized_keys=[client_key]) as impostor,
    ):
        target = KnownKeyTarget(first.address, "u", None, error=NotImplementedError())
        async with cloudvm.SSHExecutor(target, signers=[client_key], trust_on_first_use=True) as ex:
            assert await ex.execute("echo first") == (b"first\n", b"")
            target.address = impostor.address
            with pytest.raises(cloudvm.HostKeyError, match="changed"):
                await ex.execute("echo impostor")
        assert impostor.commands == []


async def test_verifier_crash_is_a_host_key_error(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    target = KnownKeyTarget(ssh_server.address, "u", None, error=OSError("metadata unreachable"))
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        with pytest.raises(cloudvm.HostKeyError, match="metadata unreachable"):
            await ex.execute("true")
    assert ssh_server.commands == []


async def test_verification_that_hangs_times_out(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    class Hanging(KnownKeyTarget):
        async def verify_host_key(
            self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
        ) -> None:
            await anyio.sleep_forever()

    target = Hanging(ssh_server.address, "u", None)
    async with cloudvm.SSHExecutor(target, signers=[client_key], verify_timeout=0.2) as ex:
        with pytest.raises(cloudvm.HostKeyError, match="timed out"):
            await ex.execute("true")
    assert ssh_server.commands == []


async def test_new_target_closes_the_connection_and_verifies_afresh(
    client_key: asyncssh.SSHKey,
) -> None:
    async with (
        SSHTestServer(authorized_keys=[client_key]) as a,
        SSHTestServer(authorized_keys=[client_key]) as b,
    ):
        target_a = KnownKeyTarget(a.address, "u", a.host_key)
        target_b = KnownKeyTarget(b.address, "u", b.host_key)
        async with cloudvm.SSHExecutor(target_a, signers=[client_key]) as ex:
            await ex.execute("true")
            ex.set_target(target_b)
            assert ex.target is target_b
            await ex.execute("true")
            await wait_until(lambda: not a.open_connections)
        assert len(target_b.verified) == 1


async def test_cancelled_connect_leaves_the_executor_usable(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    target = KnownKeyTarget(ssh_server.address, "u", ssh_server.host_key)
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        with anyio.move_on_after(0.001):
            await ex.execute("echo cancelled")
        assert await ex.execute("echo later") == (b"later\n", b"")


class _HeldVerification(KnownKeyTarget):
    """A target whose verification waits for ``release`` (after ``started``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = anyio.Event()
        self.release = anyio.Event()

    async def verify_host_key(
        self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
    ) -> None:
        self.started.set()
        await self.release.wait()
        await super().verify_host_key(key, conn)


async def test_set_target_while_verifying_never_lends_the_result_to_the_new_target(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    # A's verification passes, but only after set_target(B). B is at the
    # same address (say, the address was reused) and cannot prove this host.
    target_a = _HeldVerification(ssh_server.address, "u", ssh_server.host_key)
    target_b = KnownKeyTarget(ssh_server.address, "u", key=None)
    failures: list[BaseException] = []

    async def run(cmd: str) -> None:
        try:
            await ex.execute(cmd)
        except cloudvm.HostKeyError as exc:
            failures.append(exc)

    async with cloudvm.SSHExecutor(target_a, signers=[client_key]) as ex:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, "echo for-a")
            await target_a.started.wait()
            ex.set_target(target_b)
            tg.start_soon(run, "echo for-b")
            target_a.release.set()
        await run("touch pwned")
    assert len(failures) == 3
    assert target_b.verified  # B was asked; A's pass did not count for it
    assert ssh_server.commands == []
    assert not (ssh_server.workdir / "pwned").exists()


async def test_trust_on_first_use_remembers_a_key_only_for_its_own_target(
    client_key: asyncssh.SSHKey,
) -> None:
    async with (
        SSHTestServer(authorized_keys=[client_key]) as a,
        SSHTestServer(authorized_keys=[client_key]) as b,
    ):
        target_a = _HeldVerification(a.address, "u", None, error=NotImplementedError())
        target_b = KnownKeyTarget(b.address, "u", None, error=NotImplementedError())
        async with cloudvm.SSHExecutor(
            target_a, signers=[client_key], trust_on_first_use=True
        ) as ex:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ex.execute, "true")
                await target_a.started.wait()
                ex.set_target(target_b)
                target_a.release.set()
            # B's first key is B's own: A's key, trusted meanwhile, is not B's.
            assert await ex.execute("echo b") == (b"b\n", b"")
            b.drop_connections()
            await wait_until(lambda: not b.open_connections)
            assert await ex.execute("echo again") == (b"again\n", b"")
        assert a.commands == []


async def test_trust_on_first_use_accepts_the_same_key_again(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    target = KnownKeyTarget(ssh_server.address, "u", None, error=NotImplementedError())
    async with cloudvm.SSHExecutor(target, signers=[client_key], trust_on_first_use=True) as ex:
        await ex.execute("true")
        ssh_server.drop_connections()
        await wait_until(lambda: not ssh_server.open_connections)
        await ex.execute("true")
    assert len(target.verified) == 2  # asked each time: it may learn to verify


@pytest.mark.parametrize("answer", [False, True, 0, "ok", object()])
async def test_only_none_is_a_pass(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey, answer: object
) -> None:
    class Answering(KnownKeyTarget):
        async def verify_host_key(  # type: ignore[override]
            self, key: asyncssh.SSHKey, conn: asyncssh.SSHClientConnection | None
        ) -> object:
            return answer

    target = Answering(ssh_server.address, "u", None)
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:  # type: ignore[arg-type]
        with pytest.raises(cloudvm.HostKeyError, match="None"):
            await ex.execute("touch pwned")
    assert ssh_server.commands == []


_HOSTILE_TEXT = "\x1b]0;pwned\x07\x9b31m"


@pytest.mark.parametrize(
    "error",
    [OSError(f"refused: {_HOSTILE_TEXT}"), cloudvm.HostKeyError(f"refused: {_HOSTILE_TEXT}")],
    ids=["crash", "host-key-error"],
)
async def test_verification_errors_never_carry_raw_control_characters(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey, error: Exception
) -> None:
    target = KnownKeyTarget(ssh_server.address, "u", None, error=error)
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        with pytest.raises(cloudvm.HostKeyError) as info:
            await ex.execute("true")
    message = str(info.value)
    assert "refused: \\x1b]0;pwned\\x07\\x9b31m" in message
    assert not has_control_chars(message)
