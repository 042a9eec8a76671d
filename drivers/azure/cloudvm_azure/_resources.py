"""ARM's wire format: the bodies the set sends, and what it reads from VMs and NICs.

Readers take any mapping over the wire format (ARM's JSON as listed, or the
SDK's models that create gets back, which are such mappings) and return None
or empty values where a field is missing.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from cloudvm import InstanceType

from ._config import AzureConfig

__all__ = [
    "disk_names",
    "field",
    "image_reference",
    "nic_address",
    "nic_body",
    "nic_names",
    "primary_nic_id",
    "vm_body",
]


def field(data: Any, *path: str) -> Any:
    """``data[path[0]][path[1]]...``, or None where a level is missing or
    not a mapping."""
    for key in path:
        # dict first: nested wire values are plain dicts, and an ABC check
        # per level is most of what a listing adds to the SDK's own work.
        if not isinstance(data, dict) and not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def image_reference(image_id: str) -> dict[str, str]:
    """ARM's imageReference for a managed image or gallery version id, a
    shared or community gallery id, or ``publisher:offer:sku:version``.
    ValueError for anything else."""
    lowered = image_id.lower()
    if lowered.startswith("/subscriptions/"):
        return {"id": image_id}
    if lowered.startswith("/sharedgalleries/"):
        return {"sharedGalleryImageId": image_id}
    if lowered.startswith("/communitygalleries/"):
        return {"communityGalleryImageId": image_id}
    parts = image_id.split(":")
    if len(parts) == 4 and all(parts):
        return dict(zip(("publisher", "offer", "sku", "version"), parts, strict=True))
    raise ValueError(
        "image_id must be a resource id (/subscriptions/...), a gallery id "
        "(/SharedGalleries/... or /CommunityGalleries/...) or publisher:offer:sku:version"
    )


def nic_body(location: str, subnet_id: str, tags: Mapping[str, str]) -> dict[str, Any]:
    """A NIC with one primary, dynamically addressed IP configuration in ``subnet_id``."""
    return {
        "location": location,
        "tags": dict(tags),
        "properties": {
            "ipConfigurations": [
                {
                    "name": "primary",
                    "properties": {
                        "subnet": {"id": subnet_id},
                        "privateIPAllocationMethod": "Dynamic",
                        "primary": True,
                    },
                }
            ]
        },
    }


def vm_body(
    config: AzureConfig,
    vm_name: str,
    nic_id: str,
    itype: InstanceType,
    image: dict[str, str],
    init_command: str,
    key_data: str,
) -> dict[str, Any]:
    """A Linux VM (no tags yet) on NIC ``nic_id``: the admin user with
    ``key_data`` and no password, ``init_command`` as custom data, OS (and
    scratch, for ``added_scratch``) disks deleted with the VM, spot when
    preemptible."""
    managed: dict[str, Any] = {}
    if config.storage_account_type:
        managed["storageAccountType"] = config.storage_account_type
    os_profile: dict[str, Any] = {
        "computerName": vm_name,
        "adminUsername": config.admin_username,
        "linuxConfiguration": {
            "disablePasswordAuthentication": True,
            "ssh": {
                "publicKeys": [
                    {
                        "path": f"/home/{config.admin_username}/.ssh/authorized_keys",
                        "keyData": key_data,
                    }
                ]
            },
        },
    }
    if init_command:
        script = init_command if init_command.startswith("#!") else f"#!/bin/sh\n{init_command}\n"
        os_profile["customData"] = base64.b64encode(script.encode()).decode()
    storage: dict[str, Any] = {
        "imageReference": image,
        "osDisk": {
            "name": f"{vm_name}-os",
            "createOption": "FromImage",
            "deleteOption": "Delete",
            "managedDisk": dict(managed),
        },
    }
    if itype.added_scratch > 0:
        gib = -(-itype.added_scratch // (1 << 30))  # ceil
        storage["dataDisks"] = [
            {
                "lun": 0,
                "name": f"{vm_name}-scratch",
                "createOption": "Empty",
                "diskSizeGB": gib,
                "deleteOption": "Delete",
                "managedDisk": dict(managed),
            }
        ]
    properties: dict[str, Any] = {
        "hardwareProfile": {"vmSize": itype.provider_type},
        "storageProfile": storage,
        "osProfile": os_profile,
        "networkProfile": {
            "networkInterfaces": [
                {"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}
            ]
        },
    }
    if itype.preemptible:
        properties["priority"] = "Spot"
        properties["evictionPolicy"] = "Delete"
        properties["billingProfile"] = {"maxPrice": -1}
    return {"location": config.location, "properties": properties}


def nic_address(nic: Mapping[str, Any]) -> str:
    """The private IP address of the NIC's primary IP configuration; ""
    while Azure has assigned none."""
    for config in field(nic, "properties", "ipConfigurations") or []:
        if field(config, "properties", "primary") is not False:
            address = field(config, "properties", "privateIPAddress")
            if address:
                return str(address)
    return ""


def _nic_refs(properties: Mapping[str, Any]) -> list[Any]:
    return field(properties, "networkProfile", "networkInterfaces") or []


def nic_names(properties: Mapping[str, Any]) -> tuple[str, ...]:
    """The names of the NICs of the VM with these ``properties`` (the last
    part of their ids)."""
    return tuple(
        str(ref["id"]).rsplit("/", 1)[-1]
        for ref in _nic_refs(properties)
        if isinstance(ref, Mapping) and ref.get("id")
    )


def primary_nic_id(properties: Mapping[str, Any]) -> str:
    """The id of the primary NIC of the VM with these ``properties``,
    lower-cased (ARM ids compare without case); "" when it has none."""
    for ref in _nic_refs(properties):
        if field(ref, "properties", "primary") is not False and ref.get("id"):
            return str(ref["id"]).lower()
    return ""


def disk_names(properties: Mapping[str, Any]) -> tuple[str, ...]:
    """The names of the OS and data disks of the VM with these ``properties``."""
    storage = field(properties, "storageProfile") or {}
    disks = [storage.get("osDisk") or {}, *(storage.get("dataDisks") or [])]
    return tuple(str(d["name"]) for d in disks if isinstance(d, Mapping) and d.get("name"))
