"""The GCE driver's config."""

from __future__ import annotations

import re
from typing import Literal

import pydantic

from cloudvm.driverkit import is_loopback_url

__all__ = ["GCEConfig"]

_ZONE = re.compile(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


class GCEConfig(pydantic.BaseModel):
    """Config of the ``gce`` driver. Unknown keys are an error.

    ``project``: the project id instances are created in.
    ``zones``: one or more zones, tried in turn when a zone has no capacity
    (``create`` starts with the zone that last succeeded).
    ``api_endpoint``: the Compute API's base URL; None means Google's. Plain
    ``http://`` would send real credentials (a bearer token) and the
    instances' secrets unencrypted: with any credentials but ``"anonymous"``
    it is accepted only for a loopback address (127.0.0.0/8, ``::1``,
    ``localhost``) or with ``allow_insecure_transport``.
    ``allow_insecure_transport``: accept ``http://`` to any host with real
    credentials (default false).
    ``credentials``: ``"anonymous"`` (local endpoints only), the path of a
    service-account JSON key file, or None for Application Default Credentials.
    ``admin_username``: the user the SSH key is authorised for; it has
    passwordless sudo on Google's images.
    ``network`` / ``subnetwork``: network URLs or names (None: the project's
    ``default`` network and its automatic subnetwork).
    ``external_ip``: give instances an ephemeral external address.
    ``address``: which address ``Instance.address`` reports, ``"internal"``
    (the default) or ``"external"``.
    ``network_tags``: firewall tags put on every instance.
    ``service_account`` / ``scopes``: the identity the instances run as
    (None: no service account at all).
    ``boot_disk_type`` / ``boot_disk_size_gb``: the boot disk.
    ``scratch_disk``: how ``InstanceType.added_scratch`` is attached,
    ``"persistent"`` (one disk of ``scratch_disk_type``) or ``"local-ssd"``
    (as many 375 GiB NVMe local SSDs as needed).
    ``max_concurrent_calls``: how many Compute API calls may run at once (each
    in its own worker thread, with its own client).
    ``call_timeout``: seconds one HTTP call may take.
    ``operation_timeout``: seconds ``create``/``destroy`` wait for their
    operation; after it ``create`` returns the (tagged) instance anyway.
    ``list_page_size``: ``maxResults`` of each list page.
    ``insert_attempts``: how often an insert whose response was lost is sent
    again (with the same ``requestId``, so at most one instance results).
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    project: str = pydantic.Field(min_length=1, max_length=63)
    zones: list[str] = pydantic.Field(min_length=1)
    api_endpoint: str | None = None
    allow_insecure_transport: bool = False
    credentials: str | None = None
    admin_username: str = "cloudvm"
    network: str | None = None
    subnetwork: str | None = None
    external_ip: bool = False
    address: Literal["internal", "external"] = "internal"
    network_tags: list[str] = pydantic.Field(default_factory=list)
    service_account: str | None = None
    scopes: list[str] = pydantic.Field(default_factory=lambda: [_CLOUD_PLATFORM])
    boot_disk_type: str = "pd-balanced"
    boot_disk_size_gb: int = pydantic.Field(default=10, ge=10, le=65536)
    scratch_disk: Literal["persistent", "local-ssd"] = "persistent"
    scratch_disk_type: str = "pd-standard"
    max_concurrent_calls: int = pydantic.Field(default=16, ge=1, le=256)
    call_timeout: float = pydantic.Field(default=60.0, gt=0.0)
    operation_timeout: float = pydantic.Field(default=300.0, gt=0.0)
    list_page_size: int = pydantic.Field(default=500, ge=1, le=500)
    insert_attempts: int = pydantic.Field(default=3, ge=1, le=10)

    @pydantic.field_validator("zones")
    @classmethod
    def _check_zones(cls, zones: list[str]) -> list[str]:
        for zone in zones:
            if not _ZONE.match(zone):
                raise ValueError("each zone must look like 'us-central1-a'")
        if len(set(zones)) != len(zones):
            raise ValueError("zones must not repeat")
        return zones

    @pydantic.field_validator("admin_username")
    @classmethod
    def _check_user(cls, user: str) -> str:
        if not _USER.match(user):
            raise ValueError("must be a lower-case Linux user name")
        return user

    @pydantic.field_validator("api_endpoint")
    @classmethod
    def _check_endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint is not None and not re.match(r"^https?://[^/\s]+/?$", endpoint):
            raise ValueError("must be a URL such as 'https://compute.googleapis.com'")
        return endpoint.rstrip("/") if endpoint else endpoint

    @pydantic.field_validator("credentials")
    @classmethod
    def _check_credentials(cls, credentials: str | None) -> str | None:
        if credentials is not None and not credentials.strip():
            raise ValueError("must be 'anonymous' or a service-account key file path")
        return credentials

    @pydantic.model_validator(mode="after")
    def _check_address(self) -> GCEConfig:
        if self.address == "external" and not self.external_ip:
            raise ValueError("address 'external' needs external_ip: true")
        return self

    @pydantic.model_validator(mode="after")
    def _check_transport(self) -> GCEConfig:
        endpoint = self.api_endpoint
        if (
            endpoint is None
            or not endpoint.startswith("http://")
            or self.credentials == "anonymous"
            or self.allow_insecure_transport
            or is_loopback_url(endpoint)
        ):
            return self
        # The URL is not repeated: it may carry user information.
        raise ValueError(
            "api_endpoint: plain http would send the credentials unencrypted; use https, "
            "a loopback address (127.0.0.0/8, ::1, localhost), or set "
            "allow_insecure_transport: true"
        )
