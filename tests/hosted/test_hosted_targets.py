"""RedirectedTarget: one instance's identity at another address."""

from __future__ import annotations

import asyncssh
import pytest

from cloudvm import ExecutorTarget, HostKeyError
from cloudvm.testing import RedirectedTarget

from ..support import KnownKeyTarget


async def test_address_is_overridden_and_the_rest_delegated() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    original = KnownKeyTarget("10.0.0.1:22", "worker", key)
    target = RedirectedTarget(original, "127.0.0.1:2222")
    assert isinstance(target, ExecutorTarget)
    assert (target.address, target.remote_user, target.instance) == (
        "127.0.0.1:2222",
        "worker",
        original,
    )
    original.remote_user = "admin"  # read at each use, never cached
    assert target.remote_user == "admin"
    await target.verify_host_key(key, None)
    with pytest.raises(HostKeyError, match="not the expected host key"):
        await target.verify_host_key(asyncssh.generate_private_key("ssh-ed25519"), None)
    assert original.verified == [key.public_data, original.verified[1]]
    assert str(target) == "target 10.0.0.1:22 at 127.0.0.1:2222"


async def test_errors_pass_through_unchanged() -> None:
    original = KnownKeyTarget("h", "u", None, error=NotImplementedError("no way to tell"))
    with pytest.raises(NotImplementedError, match="no way to tell"):
        await RedirectedTarget(original, "elsewhere").verify_host_key(
            asyncssh.generate_private_key("ssh-ed25519"), None
        )
