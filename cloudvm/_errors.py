"""The errors drivers raise, classified by what the caller should do next.

The tree::

    CloudError                      an operational error from a cloud or a host
    ├── RateLimitError              wait until ``earliest_retry``, then retry
    ├── QuotaError                  create nothing until something is destroyed
    ├── CapacityError               avoid this type / quota group for a while
    ├── HostKeyError                the SSH server is not provably the instance
    └── ExecuteError                a remote command exited non-zero
        └── OutputLimitError        ... or wrote more than ``max_output``; ended

    ConfigError (ValueError)        a driver's config is invalid (a programming
                                    or deployment mistake, not a cloud error)

One provider error may mean several things at once; a driver then raises a
class that inherits from each of them (``class _Both(QuotaError,
CapacityError)``), so every matching ``except`` clause catches it.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "CapacityError",
    "CloudError",
    "ConfigError",
    "ExecuteError",
    "HostKeyError",
    "OutputLimitError",
    "QuotaError",
    "RateLimitError",
]


class CloudError(Exception):
    """The root of every operational error cloudvm raises.

    ``code`` keeps the provider's own error code (``"RequestLimitExceeded"``,
    ``"ZONE_RESOURCE_POOL_EXHAUSTED"``) when there is one, so that handlers can
    be coarse (``except QuotaError``) or precise (``exc.code == ...``).
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class RateLimitError(CloudError):
    """Raised by a driver when the provider refuses calls for a while.

    ``earliest_retry`` (UTC, aware) is the first moment a retry may succeed:
    the provider's own Retry-After or throttling window when it gives one,
    otherwise the driver's growing backoff. It is never in the past when
    raised.
    """

    def __init__(self, message: str, earliest_retry: datetime, *, code: str | None = None) -> None:
        if earliest_retry.tzinfo is None:
            raise ValueError("earliest_retry must be timezone-aware (UTC)")
        super().__init__(message, code=code)
        self.earliest_retry = earliest_retry


class QuotaError(CloudError):
    """Raised by ``create`` when the account may not create more instances
    until something is destroyed. Retrying sooner is pointless."""


class CapacityError(CloudError):
    """Raised by ``create`` when the provider has no capacity right now.

    ``instance_type_specific`` means another instance type may still succeed;
    ``quota_group_specific`` means types outside this quota group may still
    succeed. When both are false, no type is likely to succeed for a while.
    """

    def __init__(
        self,
        message: str,
        *,
        instance_type_specific: bool,
        quota_group_specific: bool,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.instance_type_specific = instance_type_specific
        self.quota_group_specific = quota_group_specific


class HostKeyError(CloudError):
    """Raised by ``verify_host_key`` (and by the executor) when the SSH server
    could not be proven to be the instance. No command runs on such a host."""


class ExecuteError(CloudError):
    """Raised by ``Executor.execute`` when the remote command exits non-zero.

    ============ ==============================================================
    Field        Meaning
    ============ ==============================================================
    exit_status  the command's exit status; -1 if it died from a signal or the
                 server reported none
    exit_signal  the signal name (``"TERM"``) when it died from one, else None
    stdout       everything the command wrote to stdout (bytes)
    stderr       everything the command wrote to stderr (bytes)
    ============ ==============================================================
    """

    def __init__(
        self,
        message: str,
        *,
        exit_status: int,
        stdout: bytes,
        stderr: bytes,
        exit_signal: str | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.exit_signal = exit_signal
        self.stdout = stdout
        self.stderr = stderr


class OutputLimitError(ExecuteError):
    """Raised by ``SSHExecutor.execute`` when a command writes more than
    ``limit`` bytes of output (stdout and stderr together). The executor then
    closes the session, which ends the command, so nothing is buffered past
    the cap. ``stdout`` and ``stderr`` hold what was read, ``limit`` bytes in
    all; ``exit_status`` is -1 (the command did not exit on its own).
    """

    def __init__(self, message: str, *, limit: int, stdout: bytes, stderr: bytes) -> None:
        super().__init__(message, exit_status=-1, stdout=stdout, stderr=stderr)
        self.limit = limit


class ConfigError(ValueError):
    """Raised by ``Driver.instance_set`` when the config is invalid, before any
    cloud call. The message names the driver and every offending field."""
