"""The conformance kit's settings and its report."""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import asyncssh

from .._protocols import Driver
from .._types import ImageID, InstanceSetID, InstanceType, SharedResourceTags

__all__ = [
    "STEPS",
    "STEP_BAD_INPUTS",
    "STEP_BOOT",
    "STEP_CANCELLATION",
    "STEP_CLEANUP",
    "STEP_CREATE",
    "STEP_DESTROY",
    "STEP_EXTRA_COMMAND",
    "STEP_HOST_KEY",
    "STEP_INIT_COMMAND",
    "STEP_LEFTOVERS",
    "STEP_LISTED_AT_ONCE",
    "STEP_MAKE_SET",
    "STEP_OTHER_SETS",
    "STEP_SET_TAGS",
    "STEP_STOP",
    "STEP_TAGS_EXACT",
    "STEP_TAG_FILTER",
    "ConformanceConfig",
    "ConformanceReport",
    "StepResult",
    "StepStatus",
]

# The steps, in the order they run. Their names are what reports print.
STEP_MAKE_SET = "make the instance set"
STEP_LEFTOVERS = "no instances from earlier runs"
STEP_BAD_INPUTS = "bad inputs rejected before any cloud call"
STEP_CREATE = "create"
STEP_LISTED_AT_ONCE = "listed at once"
STEP_TAGS_EXACT = "tags exact"
STEP_TAG_FILTER = "listing filters by tags"
STEP_OTHER_SETS = "other sets see nothing"
STEP_BOOT = "boot (SSH probe, host key verified)"
STEP_HOST_KEY = "host key proof rejects impostors"
STEP_INIT_COMMAND = "init command ran"
STEP_EXTRA_COMMAND = "extra command"
STEP_SET_TAGS = "set_tags replaces"
STEP_CANCELLATION = "cancelled create leaves nothing untagged"
STEP_DESTROY = "destroy, then gone from listings"
STEP_CLEANUP = "cleanup"
STEP_STOP = "stop the sets"

#: Every step name, in the order the kit runs them.
STEPS: tuple[str, ...] = (
    STEP_MAKE_SET,
    STEP_LEFTOVERS,
    STEP_BAD_INPUTS,
    STEP_CREATE,
    STEP_LISTED_AT_ONCE,
    STEP_TAGS_EXACT,
    STEP_TAG_FILTER,
    STEP_OTHER_SETS,
    STEP_BOOT,
    STEP_HOST_KEY,
    STEP_INIT_COMMAND,
    STEP_EXTRA_COMMAND,
    STEP_SET_TAGS,
    STEP_CANCELLATION,
    STEP_DESTROY,
    STEP_CLEANUP,
    STEP_STOP,
)


class StepStatus(enum.Enum):
    """How one step ended."""

    PASSED = "PASS"  # the driver did what the contract says
    FAILED = "FAIL"  # it did not; the message says how
    SKIPPED = "SKIP"  # nothing was checked (no extra command given, no create cancelled)
    NOT_RUN = "----"  # a step it depends on failed, so it could not run


@dataclasses.dataclass(frozen=True)
class StepResult:
    """The outcome of one conformance step.

    ``message`` says what was checked when the step passed, and what went
    wrong (naming ids, tags and errors) when it failed. ``duration`` is in
    seconds.
    """

    name: str
    status: StepStatus
    message: str
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the step passed or had nothing to check."""
        return self.status in (StepStatus.PASSED, StepStatus.SKIPPED)

    def __str__(self) -> str:
        line = f"{self.status.value}  {self.name} ({self.duration:.1f} s)"
        if self.message:
            line += "\n" + "\n".join("      " + part for part in self.message.splitlines())
        return line


@dataclasses.dataclass
class ConformanceReport:
    """Every step's result, in the order they ran.

    ``ok`` is true when at least one step ran and none failed or was left
    unrun; ``str(report)`` is a readable multi-line summary.
    """

    instance_set_id: InstanceSetID
    steps: list[StepResult] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every step passed (or had nothing to check)."""
        return bool(self.steps) and all(step.ok for step in self.steps)

    @property
    def failed(self) -> list[StepResult]:
        """The steps that failed or could not run."""
        return [step for step in self.steps if not step.ok]

    def step(self, name: str) -> StepResult | None:
        """The result of the step called ``name``, or None if it has not run."""
        for step in self.steps:
            if step.name == name:
                return step
        return None

    def __str__(self) -> str:
        verdict = "PASSED" if self.ok else f"FAILED ({len(self.failed)} steps)"
        lines = [f"cloudvm conformance for instance set {self.instance_set_id}: {verdict}"]
        lines.extend(str(step) for step in self.steps)
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ConformanceConfig:
    """What the conformance kit needs to exercise one driver on one account.

    Parameters:
        driver: a driver name (``"loopback"``, ``"ec2"``) for
            :func:`cloudvm.load_driver`, or a :class:`cloudvm.Driver`.
        image_id: the image instances boot from; it must run ``init_command``
            at first boot and accept SSH logins with ``ssh_key``.
        instance_type: the (preferably cheapest) type to create.
        ssh_key: the private key to log in with; its public half is passed to
            ``create``.
        config: the driver's config (a mapping or a JSON document).
        instance_set_id: the id of the set under test; None means a fresh
            ``conformance-<random>`` id, unique to the run. A second set with
            the id plus ``-other`` is made to check isolation.
        shared_tags: the SharedResourceTags given to both sets.
        destroy_existing: when the set already has instances, destroy them
            first instead of refusing to run.
        boot_probe_command: the command whose success over SSH means "booted".
        extra_command: a command to run once booted, or None for none.
        marker_path: where the init command writes its marker, relative to the
            directory init commands and SSH commands start in (loopback and
            fake), or absolute (use e.g. ``/var/tmp/cloudvm-conformance`` on
            real clouds, where init runs as root from another directory).
        trust_on_first_use: accept a driver whose ``verify_host_key`` raises
            NotImplementedError (by default that is a failure).
        boot_timeout: seconds an instance may take to appear after a failed
            create, to boot and to run its init command.
        destroy_timeout: seconds a destroyed instance may stay in listings,
            and the time cleanup may take.
        settle_timeout: seconds listings may lag behind ``set_tags``
            (eventual consistency).
        poll_interval: seconds between listings while waiting.
        cancel_delays: after how many seconds each cancelled ``create`` is
            cancelled (0 cancels it at its first await). When every create
            returns before its delay, nothing was tested and the step is
            skipped, saying so.
        ssh_connect_timeout: seconds allowed for each SSH connection attempt.
        logger: where the kit logs; None means ``cloudvm.conformance``.
    """

    driver: str | Driver
    image_id: ImageID
    instance_type: InstanceType
    ssh_key: asyncssh.SSHKey
    config: Mapping[str, Any] | str | bytes = dataclasses.field(default_factory=dict)
    instance_set_id: InstanceSetID | None = None
    shared_tags: SharedResourceTags = dataclasses.field(default_factory=dict)
    destroy_existing: bool = False
    boot_probe_command: str = "true"
    extra_command: str | None = None
    marker_path: str = "cloudvm-conformance-marker"
    trust_on_first_use: bool = False
    boot_timeout: float = 600.0
    destroy_timeout: float = 300.0
    settle_timeout: float = 60.0
    poll_interval: float = 2.0
    cancel_delays: Sequence[float] = (0.0, 0.05, 0.5)
    ssh_connect_timeout: float = 30.0
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None

    def __post_init__(self) -> None:
        for name in (
            "boot_timeout",
            "destroy_timeout",
            "settle_timeout",
            "poll_interval",
            "ssh_connect_timeout",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if any(not delay >= 0 for delay in self.cancel_delays):
            raise ValueError(f"cancel_delays must be seconds >= 0, got {self.cancel_delays!r}")
        if not self.marker_path:
            raise ValueError("marker_path must not be empty")
