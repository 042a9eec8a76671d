"""Finding drivers by name through the ``cloudvm.drivers`` entry-point group."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ._protocols import Driver, InstanceSet
from ._types import InstanceSetID, SharedResourceTags

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["ENTRY_POINT_GROUP", "available_drivers", "driver_func", "load_driver"]

ENTRY_POINT_GROUP = "cloudvm.drivers"

# Drivers that live in their own distributions, so that a miss can say what to
# install instead of only "no such driver".
_KNOWN_DISTRIBUTIONS = {
    "ec2": "aiocloudvm-ec2",
    "gce": "aiocloudvm-gce",
    "azure": "aiocloudvm-azure",
}

InstanceSetFunc = Callable[
    [
        "Mapping[str, Any] | str | bytes",
        InstanceSetID,
        SharedResourceTags,
        "logging.Logger | logging.LoggerAdapter[Any]",
        "prometheus_client.CollectorRegistry | None",
    ],
    Awaitable[InstanceSet],
]

_cache: dict[str, Driver] = {}
_cache_lock = threading.Lock()


class _FuncDriver:
    """A Driver whose ``instance_set`` is a plain coroutine function."""

    def __init__(self, fn: InstanceSetFunc) -> None:
        self._fn = fn

    async def instance_set(
        self,
        config: Mapping[str, Any] | str | bytes,
        id: InstanceSetID,
        tags: SharedResourceTags,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> InstanceSet:
        return await self._fn(config, id, tags, logger, registry)

    def __repr__(self) -> str:
        name = getattr(self._fn, "__qualname__", repr(self._fn))
        return f"driver_func({name})"


def driver_func(fn: InstanceSetFunc) -> Driver:
    """Turn a coroutine function ``fn(config, id, tags, logger, registry)`` that
    returns an InstanceSet into a :class:`Driver` (like Go's ``DriverFunc``,
    which is similar to ``http.HandlerFunc``)::

        async def _new_set(config, id, tags, logger, registry):
            return MyInstanceSet(parse(config), id, tags, logger)

        DRIVER = cloudvm.driver_func(_new_set)
    """
    return _FuncDriver(fn)


def available_drivers() -> list[str]:
    """The names of every installed driver, sorted."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_driver(name: str) -> Driver:
    """Return the installed driver called ``name`` (``"loopback"``, ``"ec2"``, ...).

    The driver's module is imported on first use and the driver cached.

    Raises:
        LookupError: no driver of that name is installed; the message says
            which distribution provides it when it is one of cloudvm's own.
        TypeError: the entry point does not name a Driver.
    """
    with _cache_lock:
        if name in _cache:
            return _cache[name]
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        if name in _KNOWN_DISTRIBUTIONS:
            dist = _KNOWN_DISTRIBUTIONS[name]
            raise LookupError(
                f"cloudvm driver {name!r} is not installed. Install it with: pip install {dist}"
            )
        known = ", ".join(available_drivers()) or "none"
        raise LookupError(f"no cloudvm driver named {name!r} (installed: {known})")
    driver = matches[0].load()
    if not isinstance(driver, Driver):
        raise TypeError(
            f"entry point {matches[0].value!r} for cloudvm driver {name!r} "
            f"is {type(driver).__name__}, not a Driver"
        )
    with _cache_lock:
        return _cache.setdefault(name, driver)
