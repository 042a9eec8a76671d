"""cloudvm: run a fleet of cloud VMs from an async dispatcher.

Create instances, find them again by tags, reach them over SSH, prove that
the SSH server really is the instance, run commands and destroy them, through
one typed interface over EC2, GCE, Azure and a local loopback cloud.
"""

import contextlib
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._critical import run_critical as run_critical
from ._drivers import available_drivers as available_drivers
from ._drivers import driver_func as driver_func
from ._drivers import load_driver as load_driver
from ._errors import CapacityError as CapacityError
from ._errors import CloudError as CloudError
from ._errors import ConfigError as ConfigError
from ._errors import ExecuteError as ExecuteError
from ._errors import HostKeyError as HostKeyError
from ._errors import OutputLimitError as OutputLimitError
from ._errors import QuotaError as QuotaError
from ._errors import RateLimitError as RateLimitError
from ._executor import SSHExecutor as SSHExecutor
from ._protocols import Driver as Driver
from ._protocols import Executor as Executor
from ._protocols import ExecutorTarget as ExecutorTarget
from ._protocols import Instance as Instance
from ._protocols import InstanceSet as InstanceSet
from ._resilient import ResiliencePolicy as ResiliencePolicy
from ._resilient import resilient as resilient
from ._types import ImageID as ImageID
from ._types import InitCommand as InitCommand
from ._types import InstanceID as InstanceID
from ._types import InstancePrice as InstancePrice
from ._types import InstanceQuotaGroup as InstanceQuotaGroup
from ._types import InstanceSetID as InstanceSetID
from ._types import InstanceTags as InstanceTags
from ._types import InstanceType as InstanceType
from ._types import SharedResourceTags as SharedResourceTags
from .pool import IdleBehavior as IdleBehavior
from .pool import LeasedWorker as LeasedWorker
from .pool import PoolClock as PoolClock
from .pool import PoolConfig as PoolConfig
from .pool import PoolEvent as PoolEvent
from .pool import PoolEventKind as PoolEventKind
from .pool import Worker as Worker
from .pool import WorkerLost as WorkerLost
from .pool import WorkerPool as WorkerPool
from .pool import WorkerState as WorkerState

try:
    __version__ = _version("aiocloudvm")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "CapacityError",
    "CloudError",
    "ConfigError",
    "Driver",
    "ExecuteError",
    "Executor",
    "ExecutorTarget",
    "HostKeyError",
    "IdleBehavior",
    "ImageID",
    "InitCommand",
    "Instance",
    "InstanceID",
    "InstancePrice",
    "InstanceQuotaGroup",
    "InstanceSet",
    "InstanceSetID",
    "InstanceTags",
    "InstanceType",
    "LeasedWorker",
    "OutputLimitError",
    "PoolClock",
    "PoolConfig",
    "PoolEvent",
    "PoolEventKind",
    "QuotaError",
    "RateLimitError",
    "ResiliencePolicy",
    "SSHExecutor",
    "SharedResourceTags",
    "Worker",
    "WorkerLost",
    "WorkerPool",
    "WorkerState",
    "__version__",
    "available_drivers",
    "driver_func",
    "load_driver",
    "resilient",
    "run_critical",
]

# Reprs, tracebacks and docs should say cloudvm.QuotaError, not the private path.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) or callable(_value):
        with contextlib.suppress(AttributeError, TypeError):  # builtins refuse
            _value.__module__ = __name__
