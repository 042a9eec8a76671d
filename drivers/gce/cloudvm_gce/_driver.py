"""The ``gce`` driver: a config and an InstanceSetID make a GCEInstanceSet."""

from __future__ import annotations

import anyio
import anyio.to_thread

from cloudvm.driverkit import CallMetrics, SetArguments, config_driver

from ._api import ComputeAPI, load_credentials
from ._config import GCEConfig
from ._instance import GCEInstance
from ._instance_set import GCEInstanceSet

__all__ = ["DRIVER", "GCEInstance", "GCEInstanceSet"]


async def _open_instance_set(args: SetArguments[GCEConfig]) -> GCEInstanceSet:
    credentials = await anyio.to_thread.run_sync(load_credentials, args.config)
    api = ComputeAPI(args.config, credentials)
    metrics = CallMetrics(args.registry, "gce")
    return GCEInstanceSet(args.config, args.id, args.logger, metrics, api)


#: The GCE driver; ``cloudvm.load_driver("gce")`` returns it.
DRIVER = config_driver(GCEConfig, _open_instance_set, name="gce")
