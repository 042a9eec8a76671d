"""The ``gce`` driver: a config and an InstanceSetID make a GCEInstanceSet."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from cloudvm import InstanceSetID, SharedResourceTags, driver_func
from cloudvm.driverkit import CallMetrics, check_set_arguments

from ._api import ComputeAPI, load_credentials
from ._config import GCEConfig
from ._instance import GCEInstance
from ._instance_set import GCEInstanceSet

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["DRIVER", "GCEInstance", "GCEInstanceSet"]


async def _new_instance_set(
    config: Mapping[str, Any] | str | bytes,
    id: InstanceSetID,
    tags: SharedResourceTags,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    registry: prometheus_client.CollectorRegistry | None = None,
) -> GCEInstanceSet:
    parsed, id, _ = check_set_arguments(GCEConfig, config, id, tags, driver="gce")
    credentials = await anyio.to_thread.run_sync(load_credentials, parsed)
    api = ComputeAPI(parsed, credentials)
    return GCEInstanceSet(parsed, id, logger, CallMetrics(registry, "gce"), api)


#: The GCE driver; ``cloudvm.load_driver("gce")`` returns it.
DRIVER = driver_func(_new_instance_set)
