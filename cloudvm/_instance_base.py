"""What every driver's Instance repeats, written once."""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping

from ._types import InstanceID, InstanceTags
from ._validate import RESERVED_TAG_PREFIX

__all__ = ["InstanceBase", "is_loopback_url"]


class InstanceBase:
    """A base for a driver's :class:`~cloudvm.Instance`: the identity part.

    It holds the instance's id, provider type, address, remote user and all
    its tags as of the listing or create that produced it, and implements
    ``id``, ``provider_type``, ``address``, ``remote_user``, ``tags`` (a copy
    with the driver's own ``cloudvm-*`` tags hidden), ``__str__`` (the id)
    and ``__repr__``. A driver adds what differs: ``set_tags``,
    ``price_history``, ``destroy`` and ``verify_host_key`` (and any
    provider-specific properties), and calls :meth:`_replace_user_tags` once
    ``set_tags`` has succeeded.

    Parameters:
        id: the provider's id for the instance, stable for its life.
        provider_type: the provider's name for the instance type.
        all_tags: every tag the instance carries, the driver's own included.
        address: "host" or "host:port"; "" while the provider has none.
        remote_user: the user the SSH key is authorised for.
    """

    def __init__(
        self,
        *,
        id: str,
        provider_type: str,
        all_tags: Mapping[str, str],
        address: str,
        remote_user: str,
    ) -> None:
        self._id = InstanceID(id)
        self._provider_type = provider_type
        self._all_tags = dict(all_tags)
        self._address = address
        self._remote_user = remote_user

    @property
    def id(self) -> InstanceID:
        """The provider's instance id, stable for the instance's life."""
        return self._id

    @property
    def provider_type(self) -> str:
        """The provider's name for the instance's type."""
        return self._provider_type

    @property
    def address(self) -> str:
        """Where its SSH server is reached ("host" or "host:port"); "" while
        the provider has not assigned one."""
        return self._address

    @property
    def remote_user(self) -> str:
        """The user the instance's SSH server accepts the key for."""
        return self._remote_user

    @property
    def tags(self) -> InstanceTags:
        """A copy of the caller's tags as of the listing or create (the
        driver's own ``cloudvm-*`` tags are hidden)."""
        return {k: v for k, v in self._all_tags.items() if not k.startswith(RESERVED_TAG_PREFIX)}

    def _own_tags(self) -> dict[str, str]:
        """The driver's own tags (``cloudvm-*``): the set id, the secret, ..."""
        return {k: v for k, v in self._all_tags.items() if k.startswith(RESERVED_TAG_PREFIX)}

    def _replace_user_tags(self, tags: Mapping[str, str]) -> None:
        """Record that the caller's tags are now ``tags`` (the driver's own kept)."""
        self._all_tags = {**tags, **self._own_tags()}

    def __str__(self) -> str:
        return self._id

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._id} {self._provider_type} "
            f"address={self._address!r} tags={self.tags!r}>"
        )


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host (or ``url`` itself, a bare host or ``[v6]``)
    is a loopback address: 127.0.0.0/8, ``::1``, or ``localhost`` (a name
    resolvers keep on the machine). Drivers accept an insecure transport
    (plain http, no certificate check) only to such a host, unless their
    config says ``allow_insecure_transport: true``."""
    host = urllib.parse.urlsplit(url).hostname if "//" in url else url
    name = (host or "").removeprefix("[").removesuffix("]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
