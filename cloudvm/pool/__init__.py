"""``cloudvm.pool``: the worker pool every async dispatcher needs.

A :class:`WorkerPool` keeps a fleet on any InstanceSet: the dispatcher asks
for workers of a type (:meth:`WorkerPool.create`) and runs work on idle ones
(:meth:`WorkerPool.lease`); the pool boots, proves host keys, probes, adopts
after a restart, times out and destroys. Its public names are also exported
from :mod:`cloudvm`.
"""

import contextlib

from ._clock import PoolClock as PoolClock
from ._clock import SystemPoolClock as SystemPoolClock
from ._config import CREATED_TAG as CREATED_TAG
from ._config import IDLE_BEHAVIOR_TAG as IDLE_BEHAVIOR_TAG
from ._config import INSTANCE_TYPE_TAG as INSTANCE_TYPE_TAG
from ._config import TOKEN_TAG as TOKEN_TAG
from ._config import IdleBehavior as IdleBehavior
from ._config import PoolConfig as PoolConfig
from ._config import WorkerState as WorkerState
from ._events import PoolEvent as PoolEvent
from ._events import PoolEventKind as PoolEventKind
from ._events import Subscription as Subscription
from ._leases import LeasedWorker as LeasedWorker
from ._leases import WorkerLost as WorkerLost
from ._pool import WorkerPool as WorkerPool
from ._worker import Worker as Worker
from ._worker import WorkerTarget as WorkerTarget

__all__ = [
    "CREATED_TAG",
    "IDLE_BEHAVIOR_TAG",
    "INSTANCE_TYPE_TAG",
    "TOKEN_TAG",
    "IdleBehavior",
    "LeasedWorker",
    "PoolClock",
    "PoolConfig",
    "PoolEvent",
    "PoolEventKind",
    "Subscription",
    "SystemPoolClock",
    "Worker",
    "WorkerLost",
    "WorkerPool",
    "WorkerState",
    "WorkerTarget",
]

# Reprs and tracebacks should say cloudvm.pool.WorkerPool, not the private path.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type):
        with contextlib.suppress(AttributeError, TypeError):
            _value.__module__ = __name__
