"""Plain values shared by every driver: ids, tags and instance types."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import NewType

__all__ = [
    "ImageID",
    "InitCommand",
    "InstanceID",
    "InstancePrice",
    "InstanceQuotaGroup",
    "InstanceSetID",
    "InstanceTags",
    "InstanceType",
    "SharedResourceTags",
]

#: Identifies one InstanceSet. Every instance a set creates carries it as a tag,
#: and a set never touches a resource that lacks it.
InstanceSetID = NewType("InstanceSetID", str)
#: The provider's id of one instance, stable for the instance's life.
InstanceID = NewType("InstanceID", str)
#: The provider's id of a boot image (an AMI id, an image URL, ...).
ImageID = NewType("ImageID", str)
#: A name for the pool of quota an instance type draws from ("standard",
#: "standard-spot", "n2", ...). Types in one group exhaust together.
InstanceQuotaGroup = NewType("InstanceQuotaGroup", str)
#: A shell script (under 1 KiB) that the instance runs once at first boot.
InitCommand = NewType("InitCommand", str)

#: Tags carried by one instance. Keys and values are arbitrary non-empty strings.
InstanceTags = dict[str, str]
#: Tags a driver puts on long-lived shared resources (key pairs, NICs, ...).
SharedResourceTags = dict[str, str]


@dataclasses.dataclass(frozen=True)
class InstanceType:
    """A kind of instance a dispatcher may ask for.

    ``name`` is the caller's name for the type and ``provider_type`` the
    provider's (``"m5.large"``). ``ram`` and the scratch sizes are bytes;
    ``added_scratch`` is scratch space the driver must attach on top of the
    ``included_scratch`` the type comes with. ``price`` is per hour, in the
    provider's currency. ``preemptible`` asks for spot/preemptible capacity.
    """

    name: str
    provider_type: str
    vcpus: int
    ram: int
    scratch: int
    included_scratch: int
    added_scratch: int
    price: float
    preemptible: bool = False
    gpu_count: int = 0


@dataclasses.dataclass(frozen=True)
class InstancePrice:
    """The price of an instance from ``start_time`` (UTC, aware) onwards, per hour."""

    start_time: datetime
    price: float
