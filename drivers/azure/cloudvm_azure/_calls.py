"""Calling Azure: the SDK clients, their options, and errors mapped to cloudvm's."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from typing import Any

import anyio
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.core.rest import HttpRequest
from azure.mgmt.compute.aio import ComputeManagementClient
from azure.mgmt.core.exceptions import ARMErrorFormat
from azure.mgmt.network.aio import NetworkManagementClient

from cloudvm import CloudError
from cloudvm.driverkit import printable

from ._config import AzureConfig
from ._errors import Backoff, map_error

__all__ = [
    "COMPUTE_API_VERSION",
    "CRITICAL_TIMEOUT",
    "DISK_API_VERSION",
    "NETWORK_API_VERSION",
    "ARMCalls",
    "bounded",
]

_Client = ComputeManagementClient | NetworkManagementClient

CRITICAL_TIMEOUT = 300.0  # seconds a step of create that must finish may take
#: The API versions of the listings, which read ARM's pages themselves.
COMPUTE_API_VERSION = "2024-07-01"
NETWORK_API_VERSION = "2024-05-01"
DISK_API_VERSION = "2024-03-02"


class ARMCalls:
    """The compute and network clients of one instance set (closed by
    :meth:`close`), its resource group, and the mapping of azure-core's
    errors to cloudvm's, with a throttling backoff per kind of call.

    Listings read ARM's pages as plain JSON, through the clients' own
    pipelines (the token, the options and the transport of every other
    call): the driver reads the wire format's fields, so the SDK's models
    would only be built to be read back, at about six times the CPU of
    fetching and decoding the pages. Other calls use the SDK's operations.
    """

    def __init__(self, config: AzureConfig, credential: AsyncTokenCredential) -> None:
        self.group = config.resource_group
        self._backoff = Backoff()
        self._base_url = config.base_url
        self._origin = _origin(config.base_url)
        group = urllib.parse.quote(config.resource_group, safe="")
        self._providers = (
            f"{config.base_url}/subscriptions/{urllib.parse.quote(config.subscription_id, safe='')}"
            f"/resourceGroups/{group}/providers"
        )
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

    def _url(self, rtype: str, api_version: str) -> str:
        return f"{self._providers}/{rtype}?api-version={api_version}"

    async def _pages(self, client: _Client, url: str, what: str) -> list[dict[str, Any]]:
        """The ``value`` items of every page from ``url`` on, following
        ``nextLink``: HttpResponseError for an answer that is not 200 (as
        the SDK raises it), CloudError for a page that is not ARM's JSON or
        a ``nextLink`` off the ARM endpoint (the bearer token would go with
        it) or seen before (it would never end). Items that are not JSON
        objects are no resources and are skipped."""
        items: list[dict[str, Any]] = []
        seen = {url}
        while True:
            response = await client.send_request(HttpRequest("GET", url))
            if response.status_code != 200:
                raise HttpResponseError(response=response, error_format=ARMErrorFormat)
            try:
                page = response.json()
            except ValueError:
                page = None
            value = page.get("value") if isinstance(page, dict) else None
            if not isinstance(value, list):
                raise CloudError(f"{what}: the answer is not a page of ARM resources")
            items.extend(item for item in value if isinstance(item, dict))
            link = page.get("nextLink")
            if not link:
                return items
            if not isinstance(link, str) or _origin(link) != self._origin or link in seen:
                raise CloudError(
                    f"{what}: a nextLink off {self._base_url} or seen before: "
                    f"{printable(str(link))}"
                )
            seen.add(link)
            url = link

    async def _all(
        self, client: _Client, rtype: str, version: str, what: str
    ) -> list[dict[str, Any]]:
        with self.calling("list", what):
            return await self._pages(client, self._url(rtype, version), what)

    async def list_nics(self) -> list[dict[str, Any]]:
        """Every NIC of the resource group (ARM's JSON), all pages; mapped errors."""
        return await self._all(
            self.network,
            "Microsoft.Network/networkInterfaces",
            NETWORK_API_VERSION,
            "listing network interfaces",
        )

    async def list_vms_and_nics(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every VM and every NIC of the resource group (ARM's JSON), both
        listings at once. The first to fail raises its mapped error, as one listing
        would (the other is cancelled, or its own failure dropped), and moves
        the ``list`` backoff once; both succeeding reset it."""
        found: dict[str, list[dict[str, Any]]] = {}
        failures: list[tuple[str, Exception]] = []

        async def collect(what: str, client: _Client, url: str) -> None:
            try:
                found[what] = await self._pages(client, url, what)
            except Exception as exc:
                failures.append((what, exc))
                raise

        vms, nics = "listing virtual machines", "listing network interfaces"
        vm_url = self._url("Microsoft.Compute/virtualMachines", COMPUTE_API_VERSION)
        nic_url = self._url("Microsoft.Network/networkInterfaces", NETWORK_API_VERSION)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(collect, vms, self.compute, vm_url)
                group.start_soon(collect, nics, self.network, nic_url)
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

    async def list_disks(self) -> list[dict[str, Any]]:
        """Every managed disk of the resource group (ARM's JSON), all pages;
        mapped errors."""
        return await self._all(
            self.compute, "Microsoft.Compute/disks", DISK_API_VERSION, "listing disks"
        )

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


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of ``url`` (lower-cased, the default port
    filled in): where a bearer token may go."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return ("", "", None)
    scheme = parts.scheme.lower()
    return (scheme, (parts.hostname or "").lower(), port or {"https": 443, "http": 80}.get(scheme))


@contextlib.contextmanager
def bounded(what: str) -> Iterator[None]:
    """At most CRITICAL_TIMEOUT seconds for a step that must finish; then a
    CloudError (what the step made is tagged, and left to the sweep)."""
    try:
        with anyio.fail_after(CRITICAL_TIMEOUT):
            yield
    except TimeoutError:
        raise CloudError(f"{what}: no answer within {CRITICAL_TIMEOUT:g} s") from None
