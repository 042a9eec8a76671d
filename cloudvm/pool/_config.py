"""The pool's settings, its states and the tags it keeps its facts in."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

from .._errors import ConfigError
from .._text import has_control_chars
from .._types import ImageID, InitCommand, InstanceType
from .._validate import (
    MAX_INIT_COMMAND_BYTES,
    MAX_TAG_VALUE_CHARS,
    parse_config,
    validate_tags,
)

__all__ = [
    "CREATED_TAG",
    "IDLE_BEHAVIOR_TAG",
    "INSTANCE_TYPE_TAG",
    "POOL_TAGS",
    "TOKEN_TAG",
    "IdleBehavior",
    "PoolConfig",
    "WorkerState",
    "parse_pool_config",
]

#: Tag naming the instance's type (``InstanceType.name``): how a new pool
#: knows what an adopted instance is.
INSTANCE_TYPE_TAG = "pool-instance-type"
#: Tag holding the worker's :class:`IdleBehavior` (its value, ``"run"`` ...).
IDLE_BEHAVIOR_TAG = "pool-idle-behavior"
#: Tag holding a random token per create call: an instance whose create lost
#: its response is recognised by it in the next listing.
TOKEN_TAG = "pool-create-token"
#: Tag holding the creation time (UTC, ISO 8601): adopted instances get
#: ``timeout_booting`` from then, not from when a new pool first saw them.
CREATED_TAG = "pool-created-at"
#: Every tag the pool writes itself; ``PoolConfig.tags`` may not use them.
POOL_TAGS = frozenset({INSTANCE_TYPE_TAG, IDLE_BEHAVIOR_TAG, TOKEN_TAG, CREATED_TAG})


class WorkerState(enum.Enum):
    """Where a worker is in its life."""

    #: Found in a listing, not created by this pool object (adopted after a
    #: restart): probed like a booting worker until it answers or times out.
    UNKNOWN = "unknown"
    #: Created by this pool; not yet proven (host key and boot probe).
    BOOTING = "booting"
    #: Proven and not leased: a lease may take it (if its idle behaviour is RUN).
    IDLE = "idle"
    #: Leased: a caller is running work on it.
    RUNNING = "running"
    #: Being destroyed: destroy is retried until listings no longer show it.
    SHUTDOWN = "shutdown"


class IdleBehavior(enum.Enum):
    """What the pool does with a worker when it is idle; kept in a tag."""

    #: Lease it out; destroy it after ``timeout_idle`` unused.
    RUN = "run"
    #: Keep it as it is: never leased, never destroyed for being idle.
    HOLD = "hold"
    #: Destroy it as soon as it is idle (at once if it is idle now).
    DRAIN = "drain"


def _positive(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds greater than 0")
    return value


class PoolConfig(pydantic.BaseModel):
    """What a :class:`~cloudvm.WorkerPool` may create and how it keeps the fleet honest.

    A frozen pydantic model (``extra="forbid"``): a typo or a value out of range
    is an error naming the field, raised before the pool starts. Times are
    seconds on the pool's clock; the defaults are Arvados'.

    ====================== ============================================================
    Field                  Meaning
    ====================== ============================================================
    instance_types         The types the pool may create, matched by
                           ``InstanceType.name`` (unique, non-empty).
    image_id               The image every instance boots.
    max_instances          The most instances the pool holds at once, creates in
                           flight and instances being destroyed included.
    max_concurrent_creates Create calls in flight at once; others queue.
    boot_probe_command     Must exit 0 (after the host key is proven) before a worker
                           is IDLE; it is also the periodic probe.
    probe_interval         Each worker is probed this often.
    max_probes_per_second  Probes started per second, over all workers.
    timeout_probe_command  One probe (connect, host-key proof, command) taking
                           longer than this fails.
    sync_interval          The set is listed this often, and after every change.
    timeout_booting        A worker not yet probed OK this long after its creation
                           (its ``pool-created-at`` tag for adopted ones) is
                           destroyed, at that moment.
    timeout_probe          An IDLE or RUNNING worker whose probes have failed since
                           its last successful probe this long ago is destroyed.
    timeout_idle           An IDLE worker (idle behaviour RUN) unleased this long is
                           destroyed.
    timeout_shutdown       A destroy is repeated this often until listings no longer
                           show the instance.
    init_command           Run by each instance at first boot (under 1 KiB).
    tags                   Extra tags for every instance (not the pool's own keys).
    ====================== ============================================================
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    instance_types: Sequence[InstanceType]
    image_id: ImageID
    max_instances: int = pydantic.Field(default=64, ge=1)
    max_concurrent_creates: int = pydantic.Field(default=1, ge=1)
    boot_probe_command: str = "true"
    probe_interval: float = 10.0
    max_probes_per_second: float = 10.0
    timeout_probe_command: float = 60.0
    sync_interval: float = 60.0
    timeout_booting: float = 600.0
    timeout_probe: float = 600.0
    timeout_idle: float = 60.0
    timeout_shutdown: float = 10.0
    init_command: InitCommand = InitCommand("")
    tags: Mapping[str, str] = pydantic.Field(default_factory=dict)

    @pydantic.field_validator("instance_types")
    @classmethod
    def _check_types(cls, value: Sequence[InstanceType]) -> tuple[InstanceType, ...]:
        types = tuple(value)
        if not types:
            raise ValueError("give at least one instance type")
        seen: set[str] = set()
        for itype in types:
            name = itype.name
            if not name or len(name) > MAX_TAG_VALUE_CHARS or has_control_chars(name):
                raise ValueError(
                    f"instance type name {name[:40]!r} must be 1 to {MAX_TAG_VALUE_CHARS} "
                    "characters without control characters (it is kept in a tag)"
                )
            if name in seen:
                raise ValueError(f"instance type name {name!r} is given twice")
            seen.add(name)
        return types

    @pydantic.field_validator("image_id", "boot_probe_command")
    @classmethod
    def _check_non_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @pydantic.field_validator(
        "probe_interval",
        "max_probes_per_second",
        "timeout_probe_command",
        "sync_interval",
        "timeout_booting",
        "timeout_probe",
        "timeout_idle",
        "timeout_shutdown",
    )
    @classmethod
    def _check_positive(cls, value: float, info: pydantic.ValidationInfo) -> float:
        return _positive(str(info.field_name), value)

    @pydantic.field_validator("init_command")
    @classmethod
    def _check_init_command(cls, value: str) -> str:
        if len(value.encode("utf-8")) > MAX_INIT_COMMAND_BYTES or "\0" in value:
            raise ValueError(
                f"must be under 1 KiB ({MAX_INIT_COMMAND_BYTES} bytes) without NUL characters"
            )
        return value

    @pydantic.field_validator("tags")
    @classmethod
    def _check_tags(cls, value: Mapping[str, str]) -> dict[str, str]:
        checked = validate_tags(value, field="tags")
        clashes = sorted(POOL_TAGS & set(checked))
        if clashes:
            raise ValueError(f"keys {clashes} are the pool's own tags")
        return checked

    def instance_type(self, name: str) -> InstanceType | None:
        """The configured type called ``name``, or None."""
        for itype in self.instance_types:
            if itype.name == name:
                return itype
        return None


def parse_pool_config(config: PoolConfig | Mapping[str, Any]) -> PoolConfig:
    """``config`` itself, or a mapping validated into a PoolConfig.

    Raises:
        ConfigError: a field is missing, unknown or invalid (named, values not echoed).
    """
    if isinstance(config, PoolConfig):
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"pool config must be a PoolConfig or a mapping, not {type(config).__name__}"
        )
    return parse_config(PoolConfig, config, driver="pool")
