"""The loopback driver's config."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import pydantic

__all__ = ["LoopbackConfig", "default_state_dir"]


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/cloudvm/loopback``, else ``~/.local/state/cloudvm/loopback``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "cloudvm" / "loopback"


class LoopbackConfig(pydantic.BaseModel):
    """Config of the ``loopback`` driver.

    ``state_dir``: where instances are recorded; every InstanceSet (in any
    process) pointed at the same directory sees the same cloud.
    ``max_instances``: the account's quota, counted over every set in the
    state dir; ``create`` beyond it raises QuotaError.
    ``boot_delay``: seconds an instance waits before running its init command
    and starting its SSH server.
    ``remote_user``: the user name instances accept logins for (commands run as
    the current OS user whatever it is).
    ``python``: the interpreter that runs instance processes.
    ``destroy_timeout``: seconds ``destroy`` waits for an instance process to
    exit after SIGTERM before it sends SIGKILL.
    ``fork_server``: fork instance processes from one server process per
    state dir, which has imported everything once (an instance then starts
    in milliseconds and shares most of its memory); it exits by itself once
    the state dir holds no instance. False starts each instance as a new
    interpreter.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = pydantic.Field(default_factory=default_state_dir)
    max_instances: int = pydantic.Field(default=20, ge=0)
    boot_delay: float = pydantic.Field(default=0.0, ge=0.0, le=3600.0)
    remote_user: str = pydantic.Field(default_factory=getpass.getuser, min_length=1)
    python: str | None = None
    destroy_timeout: float = pydantic.Field(default=10.0, gt=0.0)
    fork_server: bool = True
