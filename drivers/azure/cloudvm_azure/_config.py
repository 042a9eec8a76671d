"""The Azure driver's config model."""

from __future__ import annotations

import re
import urllib.parse
from typing import Self

import pydantic

from cloudvm.driverkit import is_loopback_url

__all__ = ["AzureConfig"]

_NAME = re.compile(r"^[A-Za-z0-9_.()-]{1,90}$")
# Azure refuses these admin user names for Linux VMs.
_RESERVED_USERS = frozenset(
    {"administrator", "admin", "root", "guest", "user", "user1", "test", "sys", "support"}
)


class AzureConfig(pydantic.BaseModel):
    """Config of the ``azure`` driver. Unknown keys are errors.

    Credentials: give ``tenant_id``, ``client_id`` and ``client_secret``
    together for a service principal, or none of them for azure-identity's
    default chain (environment, managed identity, ...). Times are seconds.

    Transport: the bearer token and the instances' secrets travel to
    ``base_url``. Plain ``http://`` or ``connection_verify: false`` (any
    server's certificate accepted) is allowed only for a loopback address
    (127.0.0.0/8, ``::1``, ``localhost``), or anywhere with
    ``allow_insecure_transport: true``.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    #: The subscription every resource lives in.
    subscription_id: str = pydantic.Field(min_length=1)
    #: Service-principal credentials (all three or none).
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: pydantic.SecretStr | None = None
    #: The Entra ID authority host for sovereign clouds (default: the public cloud's).
    authority: str | None = None
    #: The resource group holding the VMs, NICs and disks the set creates.
    resource_group: str = pydantic.Field(min_length=1)
    #: The Azure region, such as ``"westeurope"``.
    location: str = pydantic.Field(min_length=1)
    #: The virtual network and subnet the NICs join.
    network: str = pydantic.Field(min_length=1)
    subnet: str = pydantic.Field(min_length=1)
    #: The resource group of ``network`` (default: ``resource_group``).
    network_resource_group: str | None = None
    #: The ARM endpoint: another cloud's, or a local server's in tests. HTTPS,
    #: unless loopback or ``allow_insecure_transport``.
    base_url: str = "https://management.azure.com"
    #: Verify the ARM endpoint's TLS certificate (off only for a loopback
    #: address, unless ``allow_insecure_transport``).
    connection_verify: bool = True
    #: Accept plain http or an unverified certificate for any ``base_url``.
    allow_insecure_transport: bool = False
    #: The admin user, who gets the public key and passwordless sudo.
    admin_username: str = "cloudvm"
    #: The storage SKU of OS and scratch disks (None: Azure's default).
    storage_account_type: str | None = "StandardSSD_LRS"
    #: Seconds between polls of a long-running operation when Azure gives no
    #: Retry-After (azure-core's default is 30).
    lro_polling_interval: float = pydantic.Field(default=5.0, ge=0)
    #: Seconds one HTTP request may take (connect and read).
    request_timeout: float = pydantic.Field(default=60.0, gt=0)
    #: Seconds between sweeps for dangling NICs and disks; None: no sweep.
    sweep_interval: float | None = pydantic.Field(default=300.0, gt=0)
    #: Age in seconds after which a detached NIC or disk of this set is dangling.
    sweep_after: float = pydantic.Field(default=900.0, ge=0)
    #: The prefix of every resource name the set creates.
    name_prefix: str = pydantic.Field(default="cloudvm", pattern=r"^[a-z][a-z0-9-]{0,19}$")

    @pydantic.field_validator("resource_group", "network", "subnet", "network_resource_group")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("must be 1-90 letters, digits or . _ - ( )")
        return value

    @pydantic.field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an https:// URL")
        return value.rstrip("/")

    @pydantic.field_validator("authority")
    @classmethod
    def _check_authority(cls, value: str | None) -> str | None:
        # The client secret goes there: azure-identity takes a host name or
        # an https URL.
        if value is not None and "://" in value and not value.lower().startswith("https://"):
            raise ValueError("must be a host name or an https:// URL")
        return value

    @pydantic.field_validator("admin_username")
    @classmethod
    def _check_admin(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value) or value in _RESERVED_USERS:
            raise ValueError("must be a Linux user name that Azure allows (not root, admin, ...)")
        return value

    @property
    def plain_http(self) -> bool:
        """True when ``base_url`` is a plain ``http://`` URL."""
        return urllib.parse.urlsplit(self.base_url).scheme == "http"

    @pydantic.model_validator(mode="after")
    def _check_transport(self) -> Self:
        if self.allow_insecure_transport or is_loopback_url(self.base_url):
            return self
        # The URL is not repeated: it may carry user information.
        if self.plain_http:
            raise ValueError(
                "base_url: plain http would send the bearer token and the instances' "
                "secrets unencrypted; use https, a loopback address (127.0.0.0/8, ::1, "
                "localhost), or set allow_insecure_transport: true"
            )
        if not self.connection_verify:
            raise ValueError(
                "connection_verify: false would send the bearer token to any server "
                "that answers; allowed only for a loopback base_url (127.0.0.0/8, ::1, "
                "localhost), or with allow_insecure_transport: true"
            )
        return self

    @pydantic.model_validator(mode="after")
    def _check_credentials(self) -> Self:
        given = [
            self.tenant_id is not None,
            self.client_id is not None,
            self.client_secret is not None,
        ]
        if any(given) and not all(given):
            raise ValueError(
                "tenant_id, client_id and client_secret must be given together "
                "(or none of them, for the default credential chain)"
            )
        return self
