"""The ``ec2`` driver: a config in, an :class:`EC2InstanceSet` on its own
aiobotocore client out."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import anyio.to_thread

from cloudvm.driverkit import SetArguments, config_driver, run_critical, validate_tags

from ._calls import EC2Client
from ._config import EC2Config
from ._instance_set import EC2InstanceSet
from ._metrics import EC2Metrics
from ._redact import install_redaction
from ._tags import check_ec2_tags

__all__ = ["DRIVER"]


async def _open_instance_set(args: SetArguments[EC2Config]) -> EC2InstanceSet:
    metrics = EC2Metrics(args.registry, args.id)
    stack = contextlib.AsyncExitStack()
    try:
        client = await _open_client(args.config, stack)
    except BaseException:
        await run_critical(stack.aclose)
        raise
    return EC2InstanceSet(args.config, args.id, args.tags, args.logger, metrics, client, stack)


def _shared_tags(tags: object, *, field: str) -> dict[str, str]:
    # Shared tags go on key pairs, not instances: no IMDS limits, no reserved tags.
    shared = validate_tags(tags, field=field)
    check_ec2_tags(shared, field=field, imds=False, reserved=0)
    return shared


async def _open_client(config: EC2Config, stack: contextlib.AsyncExitStack) -> EC2Client:
    """One aiobotocore EC2 client with SDK retries off, entered on ``stack``;
    botocore's own debug logs redacted."""
    from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
    from aiobotocore.session import AioSession  # type: ignore[import-untyped]

    # Building a client reads botocore's data files (~0.15 s of JSON for
    # EC2): load them in a worker thread into the session's loader, whose
    # cache create_client then uses, so the event loop never blocks on them.
    def prepare() -> AioSession:
        session = AioSession(profile=config.profile)
        loader = session.get_component("data_loader")
        for name in ("endpoints", "partitions", "sdk-default-configuration"):
            loader.load_data(name)
        for kind in ("service-2", "paginators-1", "endpoint-rule-set-1"):
            loader.load_service_model("ec2", kind)
        return session

    install_redaction()
    session = await anyio.to_thread.run_sync(prepare)
    aio_config = AioConfig(
        # Throttling must reach the caller as RateLimitError, not be retried
        # (and hidden for ~9 s) by botocore.
        retries={"total_max_attempts": 1},
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        user_agent_extra="cloudvm-ec2",
    )
    kwargs: dict[str, Any] = {"region_name": config.region, "config": aio_config}
    if config.endpoint_url is not None:
        kwargs["endpoint_url"] = str(config.endpoint_url).rstrip("/")
    if config.access_key_id is not None and config.secret_access_key is not None:
        kwargs["aws_access_key_id"] = config.access_key_id
        kwargs["aws_secret_access_key"] = config.secret_access_key.get_secret_value()
        if config.session_token is not None:
            kwargs["aws_session_token"] = config.session_token.get_secret_value()
    client: EC2Client = await stack.enter_async_context(session.create_client("ec2", **kwargs))
    return client


#: The EC2 driver; ``cloudvm.load_driver("ec2")`` returns it.
DRIVER = config_driver(
    EC2Config, _open_instance_set, name="ec2", max_id_chars=256, check_tags=_shared_tags
)
