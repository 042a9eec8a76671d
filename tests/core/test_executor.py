"""SSHExecutor against an in-process asyncssh server and a real OpenSSH sshd."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
from collections.abc import AsyncIterator

import anyio
import asyncssh
import pytest

import cloudvm
from cloudvm.testing import SSHTestServer

from ..conftest import OpenSSHServer
from ..support import KnownKeyTarget


@dataclasses.dataclass
class Server:
    kind: str
    address: str
    user: str
    host_key: asyncssh.SSHKey


@pytest.fixture(params=["asyncssh", "openssh"])
async def server(
    request: pytest.FixtureRequest, client_key: asyncssh.SSHKey
) -> AsyncIterator[Server]:
    if request.param == "asyncssh":
        async with SSHTestServer(authorized_keys=[client_key]) as srv:
            yield Server("asyncssh", srv.address, "tester", srv.host_key)
    else:
        sshd: OpenSSHServer = request.getfixturevalue("openssh_server")
        yield Server("openssh", sshd.address, sshd.user, sshd.host_key)


@pytest.fixture
async def executor(
    server: Server, client_key: asyncssh.SSHKey
) -> AsyncIterator[cloudvm.SSHExecutor]:
    target = KnownKeyTarget(server.address, server.user, server.host_key)
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        yield ex


async def test_stdout_and_stderr_are_separate(executor: cloudvm.SSHExecutor) -> None:
    out, err = await executor.execute("echo out; echo err >&2")
    assert (out, err) == (b"out\n", b"err\n")


async def test_nonzero_exit_raises_with_status_and_output(executor: cloudvm.SSHExecutor) -> None:
    with pytest.raises(cloudvm.ExecuteError) as info:
        await executor.execute("echo partial; echo oops >&2; exit 3")
    assert info.value.exit_status == 3
    assert info.value.stdout == b"partial\n"
    assert info.value.stderr == b"oops\n"
    assert isinstance(info.value, cloudvm.CloudError)


async def test_stdin_is_fed_then_closed(executor: cloudvm.SSHExecutor) -> None:
    data = os.urandom(300_000)
    out, _ = await executor.execute("cat", stdin=data)
    assert out == data
    out, _ = await executor.execute("cat; echo done")  # no stdin: EOF at once
    assert out == b"done\n"


async def test_env_reaches_the_command_quoted(executor: cloudvm.SSHExecutor) -> None:
    value = 'it\'s $HOME; `rm -rf /` "quoted"'
    out, _ = await executor.execute('printf %s "$ODD"', env={"ODD": value})
    assert out.decode() == value


_AWKWARD_VALUES = {
    "QUOTES": "it's \"double\" and 'single' \\ back\\slash",
    "NEWLINES": "\nfirst\nsecond\n\n",
    "SUBST": "$(touch pwned) `touch pwned` ${HOME} $$ $0 *",
    "UNICODE": "na\u00efve \u2013 東京 \u2013 🚀",
    "EMPTY": "",
    "SPACES": "  lead and trail  ",
    "DASH": "-n",
}


async def test_env_values_arrive_exactly_and_stdin_after_them(
    executor: cloudvm.SSHExecutor,
) -> None:
    script = "; ".join(f'printf "%s\\0" "${name}"' for name in _AWKWARD_VALUES) + "; cat"
    stdin = b"line one\nsecond line without newline\x00\xff"
    out, err = await executor.execute(script, stdin=stdin, env=_AWKWARD_VALUES)
    assert err == b""
    *values, rest = out.split(b"\0", len(_AWKWARD_VALUES))
    assert [v.decode() for v in values] == list(_AWKWARD_VALUES.values())
    assert rest == stdin
    # without stdin the command still sees EOF at once, after the env
    out, _ = await executor.execute('cat; printf %s "$DASH"', env={"DASH": "-n"})
    assert out == b"-n"


async def test_env_values_stay_out_of_the_command_line_and_every_log(
    server: Server,
    client_key: asyncssh.SSHKey,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    secret = "sk_live_" + secrets.token_hex(16)
    caplog.set_level(logging.DEBUG)  # every logger, asyncssh's included
    asyncssh.set_debug_level(2)
    request.addfinalizer(lambda: asyncssh.set_debug_level(1))
    target = KnownKeyTarget(server.address, server.user, server.host_key)
    async with cloudvm.SSHExecutor(
        target, signers=[client_key], logger=logging.getLogger("cloudvm.test")
    ) as ex:
        # The shell's own command line, as any user of the host could read it.
        out, _ = await ex.execute(
            'tr "\\0" " " < /proc/$$/cmdline; printf "\\n%s" "$API_TOKEN"',
            env={"API_TOKEN": secret},
        )
    cmdline, _, seen = out.decode().rpartition("\n")
    assert seen == secret
    assert "sh" in cmdline  # the command line was readable
    assert secret not in cmdline
    assert any(r.name.startswith("asyncssh") for r in caplog.records)
    for record in caplog.records:
        assert secret not in record.getMessage(), record
        assert secret not in repr(record.__dict__), record


async def test_bad_env_name_is_refused_before_connecting(server: Server) -> None:
    target = KnownKeyTarget(server.address, server.user, server.host_key)
    async with cloudvm.SSHExecutor(target) as ex:
        with pytest.raises(ValueError, match="BAD-NAME"):
            await ex.execute("true", env={"BAD-NAME": "x"})
    assert target.verified == []


async def test_many_concurrent_commands_share_one_connection(
    server: Server, client_key: asyncssh.SSHKey
) -> None:
    # sshd allows 10 sessions per connection (MaxSessions 10 in the fixture);
    # the executor must queue the rest rather than fail.
    target = KnownKeyTarget(server.address, server.user, server.host_key)
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        results: dict[int, bytes] = {}

        async def run(n: int) -> None:
            results[n] = (await ex.execute(f"sleep 0.05; echo {n}"))[0]

        async with anyio.create_task_group() as tg:
            for n in range(40):
                tg.start_soon(run, n)
    assert results == {n: f"{n}\n".encode() for n in range(40)}
    assert len(target.verified) == 1  # one connection, verified once


async def test_output_beyond_max_output_ends_the_command_with_what_was_read(
    server: Server, client_key: asyncssh.SSHKey
) -> None:
    # Both servers end a session's command when the client closes the
    # session with output still pending.
    target = KnownKeyTarget(server.address, server.user, server.host_key)
    async with cloudvm.SSHExecutor(target, signers=[client_key], max_output=100_000) as ex:
        # far more than the cap, on both streams, and it would never end
        with pytest.raises(cloudvm.OutputLimitError) as info:
            await ex.execute("echo begin >&2; yes 0123456789abcdef; echo never")
        error = info.value
        assert isinstance(error, cloudvm.ExecuteError)
        assert error.limit == 100_000
        assert "100000" in str(error)
        assert len(error.stdout) + len(error.stderr) == 100_000
        assert error.stdout.startswith(b"0123456789abcdef\n")
        assert error.stdout.strip(b"0123456789abcdef\n") == b""
        assert error.stderr in (b"", b"begin\n")
        # the connection stays usable; a per-call cap overrides the executor's
        assert await ex.execute("echo fine") == (b"fine\n", b"")
        with pytest.raises(cloudvm.OutputLimitError):
            await ex.execute("printf 12345", max_output=4)
        assert await ex.execute("printf 1234", max_output=4) == (b"1234", b"")
        big, _ = await ex.execute("head -c 300000 /dev/zero", max_output=None)
        assert big == bytes(300_000)


def test_max_output_defaults_to_16_mib() -> None:
    assert cloudvm.SSHExecutor().max_output == 16 * 1024 * 1024


async def test_command_timeout_raises_and_connection_stays_usable(
    executor: cloudvm.SSHExecutor,
) -> None:
    with pytest.raises(TimeoutError):
        await executor.execute("sleep 30", timeout=0.3)
    assert await executor.execute("echo alive") == (b"alive\n", b"")


async def test_reconnects_after_the_server_drops_the_connection(
    server: Server, client_key: asyncssh.SSHKey, request: pytest.FixtureRequest
) -> None:
    target = KnownKeyTarget(server.address, server.user, server.host_key)
    async with cloudvm.SSHExecutor(target, signers=[client_key]) as ex:
        await ex.execute("true")
        if server.kind == "openssh":
            sshd: OpenSSHServer = request.getfixturevalue("openssh_server")
            for pid in sshd.session_pids():
                os.kill(pid, signal.SIGKILL)
        else:
            # the asyncssh fixture server is not reachable from here: drop it
            # by closing the client's socket under the executor's feet
            live = ex._live
            assert live is not None
            live.conn.abort()
        with anyio.fail_after(10):
            while True:  # wait until the client notices
                live = ex._live
                if live is None or live.conn.is_closed():
                    break
                await anyio.sleep(0.01)
        assert await ex.execute("echo again") == (b"again\n", b"")
    # every new connection is verified, whatever key it presents
    assert target.verified == [server.host_key.public_data] * 2


async def test_connect_timeout_to_a_silent_server() -> None:
    # A listener that accepts TCP but never speaks SSH.
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        target = KnownKeyTarget(f"127.0.0.1:{port}", "nobody", None)
        async with anyio.create_task_group() as tg:
            accepted: list[anyio.abc.SocketStream] = []

            async def hold(stream: anyio.abc.SocketStream) -> None:
                accepted.append(stream)
                await anyio.sleep_forever()

            tg.start_soon(listener.serve, hold)
            async with cloudvm.SSHExecutor(target, connect_timeout=0.5) as ex:
                with pytest.raises((TimeoutError, asyncssh.Error)):
                    await ex.execute("true")
            tg.cancel_scope.cancel()
        for stream in accepted:
            await stream.aclose()
    assert target.verified == []


async def test_empty_address_is_a_clear_error() -> None:
    async with cloudvm.SSHExecutor(KnownKeyTarget("", "u", None)) as ex:
        with pytest.raises(ValueError, match="no address yet"):
            await ex.execute("true")


async def test_address_without_port_uses_the_configured_port(
    ssh_server: SSHTestServer, client_key: asyncssh.SSHKey
) -> None:
    target = KnownKeyTarget("127.0.0.1", "u", ssh_server.host_key)
    async with cloudvm.SSHExecutor(target, signers=[client_key], port=ssh_server.port) as ex:
        assert await ex.execute("echo ok") == (b"ok\n", b"")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 22)),
        ("10.0.0.1:2222", ("10.0.0.1", 2222)),
        ("[fe80::1]:2200", ("fe80::1", 2200)),
        ("fe80::1", ("fe80::1", 22)),
        ("host.example", ("host.example", 22)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    from cloudvm.driverkit import split_address

    assert split_address(address, 22) == expected


@pytest.mark.parametrize("address", ["", "host:", "host:99999", "[fe80::1", ":22"])
def test_split_address_rejects_malformed(address: str) -> None:
    from cloudvm.driverkit import split_address

    with pytest.raises(ValueError, match="address"):
        split_address(address, 22)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("connect_timeout", 0),
        ("login_timeout", -1),
        ("command_timeout", 0),
        ("keepalive_interval", 0),
        ("max_sessions", 0),
        ("max_output", 0),
        ("max_output", -5),
        ("port", 70000),
    ],
)
def test_bad_options_are_refused(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        cloudvm.SSHExecutor(**{option: value})  # type: ignore[arg-type]


async def test_execute_after_close_is_a_runtime_error(executor: cloudvm.SSHExecutor) -> None:
    await executor.execute("true")
    await executor.close()
    with pytest.raises(RuntimeError, match="closed"):
        await executor.execute("true")


async def test_execute_without_target_is_a_runtime_error() -> None:
    async with cloudvm.SSHExecutor() as ex:
        with pytest.raises(RuntimeError, match="set_target"):
            await ex.execute("true")


def test_ssh_executor_is_an_executor() -> None:
    assert isinstance(cloudvm.SSHExecutor(), cloudvm.Executor)
