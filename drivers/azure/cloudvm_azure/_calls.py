"""Calling Azure: the SDK clients, their options, and errors mapped to cloudvm's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.network.aio import NetworkManagementClient

from cloudvm import CloudError

from ._config import AzureConfig
from ._errors import Backoff, map_error

__all__ = ["CRITICAL_TIMEOUT", "ARMCalls", "bounded"]

CRITICAL_TIMEOUT = 300.0  # seconds a step of create that must finish may take


class ARMCalls:
    """The compute and network clients of one instance set (closed by
    :meth:`close`), its resource group, and the mapping of azure-core's
    errors to cloudvm's, with a throttling backoff per kind of call.

    The SDK's models are used as they come: they are mappings over ARM's
    wire format, so reading them is cheap, where copying them (``as_dict``)
    is not.
    """

    def __init__(self, config: AzureConfig, credential: AsyncTokenCredential) -> None:
        self.group = config.resource_group
        self._backoff = Backoff()
        options: dict[str, Any] = {
            "base_url": config.base_url,
            "credential_scopes": [f"{config.base_url}/.default"],
            # azure-core would retry 429 ten times; throttling must surface.
            "retry_total": 0,
            # Never log bodies: they carry the custom data and the instance
            # secret (the HTTP logging policy logs headers, the token redacted).
            "logging_enable": False,
            "polling_interval": config.lro_polling_interval,
            "connection_verify": config.connection_verify,
            "connection_timeout": config.request_timeout,
            "read_timeout": config.request_timeout,
        }
        if config.plain_http:
            # Allowed by the config (a loopback address, or insecure transport
            # asked for); azure-core would refuse the bearer token otherwise.
            options["per_call_policies"] = [_PlainHttpAllowed()]
        self.compute = ComputeManagementClient(credential, config.subscription_id, **options)
        self.network = NetworkManagementClient(credential, config.subscription_id, **options)

    @contextlib.contextmanager
    def calling(self, kind: str, what: str) -> Iterator[None]:
        """Map azure-core's errors for the calls in the block (RateLimitError,
        QuotaError, CapacityError or CloudError, the SDK's error as cause);
        a success resets the backoff of ``kind``."""
        try:
            yield
        except HttpResponseError as exc:
            raise map_error(exc, kind=kind, backoff=self._backoff, what=what) from exc
        except AzureError as exc:
            raise CloudError(f"{what}: {type(exc).__name__}: {exc.message}") from exc
        self._backoff.reset(kind)

    async def _all(self, pager: Any, what: str) -> list[Mapping[str, Any]]:
        with self.calling("list", what):
            return [item async for item in pager]

    async def list_nics(self) -> list[Mapping[str, Any]]:
        """Every NIC of the resource group, all pages; mapped errors."""
        pager = self.network.network_interfaces.list(self.group)
        return await self._all(pager, "listing network interfaces")

    async def list_vms_and_nics(self) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        """Every VM and every NIC of the resource group, both listings at
        once. The first to fail raises its mapped error, as one listing
        would (the other is cancelled, or its own failure dropped), and moves
        the ``list`` backoff once; both succeeding reset it."""
        found: dict[str, list[Mapping[str, Any]]] = {}
        failures: list[tuple[str, Exception]] = []

        async def collect(what: str, pager: Any) -> None:
            try:
                found[what] = [item async for item in pager]
            except Exception as exc:
                failures.append((what, exc))
                raise

        vms, nics = "listing virtual machines", "listing network interfaces"
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(collect, vms, self.compute.virtual_machines.list(self.group))
                group.start_soon(collect, nics, self.network.network_interfaces.list(self.group))
        except BaseExceptionGroup as errors:
            _, rest = errors.split(Exception)
            if rest is not None:
                raise
        # Outside the handler, so that the error's context is not the group.
        what, failure = failures[0] if failures else (vms, None)
        with self.calling("list", what):
            if failure is not None:
                raise failure
        return found[vms], found[nics]

    async def list_disks(self) -> list[Mapping[str, Any]]:
        """Every managed disk of the resource group, all pages; mapped errors."""
        pager = self.compute.disks.list_by_resource_group(self.group)
        return await self._all(pager, "listing disks")

    async def delete(self, operations: Any, name: str, *, kind: str, what: str) -> None:
        """Delete ``name`` through ``operations`` (``compute.disks``,
        ``network.network_interfaces``, ...) and wait for the operation;
        mapped errors."""
        with self.calling(kind, what):
            poller = await operations.begin_delete(self.group, name)
            await poller.result()

    async def close(self) -> None:
        """Close both clients' HTTP sessions."""
        await self.compute.close()
        await self.network.close()


class _PlainHttpAllowed(SansIOHTTPPolicy[Any, Any]):
    """Lets azure-core's bearer-token policy send the token over plain http,
    as the config allowed (it checks ``enforce_https`` in the request's context)."""

    def on_request(self, request: PipelineRequest[Any]) -> None:
        request.context["enforce_https"] = False


@contextlib.contextmanager
def bounded(what: str) -> Iterator[None]:
    """At most CRITICAL_TIMEOUT seconds for a step that must finish; then a
    CloudError (what the step made is tagged, and left to the sweep)."""
    try:
        with anyio.fail_after(CRITICAL_TIMEOUT):
            yield
    except TimeoutError:
        raise CloudError(f"{what}: no answer within {CRITICAL_TIMEOUT:g} s") from None
