"""The ``azure`` driver's entry points: DRIVER and open_instance_set."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from azure.core.credentials_async import AsyncTokenCredential

from cloudvm import InstanceSetID, SharedResourceTags, driver_func
from cloudvm.driverkit import CallMetrics, check_set_arguments

from ._config import AzureConfig
from ._instance_set import AzureInstanceSet
from ._tags import MAX_TAGS, OWN_TAGS, azure_tags

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["DRIVER", "open_instance_set"]


def _default_credential(config: AzureConfig) -> AsyncTokenCredential:
    from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential

    options: dict[str, Any] = {}
    if config.authority:
        options["authority"] = config.authority
    if config.client_secret is not None:
        assert config.tenant_id is not None and config.client_id is not None
        return ClientSecretCredential(
            config.tenant_id, config.client_id, config.client_secret.get_secret_value(), **options
        )
    return DefaultAzureCredential(**options)


def _shared_tags(tags: object, *, field: str) -> dict[str, str]:
    # Shared tags go on NICs, beside the set's own tags there.
    return azure_tags(tags, room=MAX_TAGS - len(OWN_TAGS), field=field)


async def open_instance_set(
    config: Mapping[str, Any] | str | bytes,
    id: InstanceSetID,
    tags: SharedResourceTags,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    registry: prometheus_client.CollectorRegistry | None = None,
    *,
    credential: AsyncTokenCredential | None = None,
) -> AzureInstanceSet:
    """Make an Azure InstanceSet, as ``DRIVER.instance_set`` does, with an
    optional ``credential`` (any async ``get_token`` credential) used instead
    of the one the config names; the caller keeps ownership of it.

    The config is validated before any cloud call (ConfigError naming the
    field); the set starts its sweep task, which ``stop()`` ends.
    """
    parsed, id, shared = check_set_arguments(
        AzureConfig, config, id, tags, driver="azure", check_tags=_shared_tags
    )
    owns = credential is None
    instance_set = AzureInstanceSet(
        parsed,
        id,
        shared,
        logger,
        CallMetrics(registry, "azure"),
        credential if credential is not None else _default_credential(parsed),
        owns_credential=owns,
    )
    instance_set._start()
    return instance_set


#: The Azure driver; ``cloudvm.load_driver("azure")`` returns it.
DRIVER = driver_func(open_instance_set)
