"""The instance resource an insert sends: disks, network, metadata, labels.

Everything that tags the instance (the set id, the secret, the tags item and
the derived labels) is part of the insert itself, so that no instance ever
exists untagged.
"""

from __future__ import annotations

import math

import asyncssh
from google.cloud import compute_v1

from cloudvm import InstanceTags, InstanceType
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG

from ._config import GCEConfig
from ._tags import TAGS_ITEM, encode_tags, labels_for

__all__ = ["instance_body"]

_LOCAL_SSD_BYTES = 375 * 2**30  # one GCE local SSD partition
_GIB = 2**30


def _scratch_disks(
    config: GCEConfig, zone: str, added_scratch: int
) -> list[compute_v1.AttachedDisk]:
    if added_scratch <= 0:
        return []
    if config.scratch_disk == "local-ssd":
        return [
            compute_v1.AttachedDisk(
                type_="SCRATCH",
                interface="NVME",
                auto_delete=True,
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    disk_type=f"zones/{zone}/diskTypes/local-ssd"
                ),
            )
            for _ in range(math.ceil(added_scratch / _LOCAL_SSD_BYTES))
        ]
    return [
        compute_v1.AttachedDisk(
            auto_delete=True,
            initialize_params=compute_v1.AttachedDiskInitializeParams(
                disk_size_gb=math.ceil(added_scratch / _GIB),
                disk_type=f"zones/{zone}/diskTypes/{config.scratch_disk_type}",
            ),
        )
    ]


def instance_body(
    config: GCEConfig,
    set_id: str,
    *,
    name: str,
    zone: str,
    itype: InstanceType,
    image_id: str,
    tags: InstanceTags,
    init_command: str,
    public_key: asyncssh.SSHKey | None,
    secret: str,
) -> compute_v1.Instance:
    """The resource of instance ``name`` of set ``set_id`` in ``zone``."""
    cfg = config
    items = {
        SET_ID_TAG: set_id,
        SECRET_TAG: secret,
        TAGS_ITEM: encode_tags(tags),
        "startup-script": f"#!/bin/sh\n{init_command}\n" if init_command else "",
        "enable-guest-attributes": "TRUE",
    }
    if public_key is not None:
        line = public_key.export_public_key("openssh").decode("ascii").split()
        items["ssh-keys"] = f"{cfg.admin_username}:{line[0]} {line[1]} {cfg.admin_username}"
    disks = [
        compute_v1.AttachedDisk(
            boot=True,
            auto_delete=True,
            initialize_params=compute_v1.AttachedDiskInitializeParams(
                source_image=image_id,
                disk_size_gb=cfg.boot_disk_size_gb,
                disk_type=f"zones/{zone}/diskTypes/{cfg.boot_disk_type}",
            ),
        ),
        *_scratch_disks(cfg, zone, itype.added_scratch),
    ]
    nic = compute_v1.NetworkInterface()
    if cfg.network:
        nic.network = cfg.network
    if cfg.subnetwork:
        nic.subnetwork = cfg.subnetwork
    if cfg.external_ip:
        nic.access_configs = [compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
    body = compute_v1.Instance(
        name=name,
        machine_type=f"zones/{zone}/machineTypes/{itype.provider_type}",
        labels=labels_for(set_id, tags),
        metadata=compute_v1.Metadata(
            items=[compute_v1.Items(key=k, value=v) for k, v in items.items()]
        ),
        disks=disks,
        network_interfaces=[nic],
    )
    if itype.preemptible:
        body.scheduling = compute_v1.Scheduling(
            provisioning_model="SPOT",
            instance_termination_action="DELETE",
            automatic_restart=False,
            on_host_maintenance="TERMINATE",
        )
    if cfg.service_account:
        body.service_accounts = [
            compute_v1.ServiceAccount(email=cfg.service_account, scopes=list(cfg.scopes))
        ]
    if cfg.network_tags:
        body.tags = compute_v1.Tags(items=list(cfg.network_tags))
    return body
