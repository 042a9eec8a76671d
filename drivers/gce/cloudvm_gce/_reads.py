"""Reading instances: one by name, a zone's listing page by page, and what
the driver takes from each listed instance."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, NamedTuple

from google.cloud import compute_v1

from cloudvm import InstanceTags
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG

from ._api import Clients, ComputeAPI
from ._config import GCEConfig
from ._tags import TAGS_ITEM, decode_tags

__all__ = [
    "InstanceRecord",
    "address_of",
    "created_at",
    "get_instance",
    "list_zone",
    "metadata_item",
]


class InstanceRecord(NamedTuple):
    """What the driver keeps of one instance of the set, as a listing or
    create saw it."""

    name: str
    zone: str
    machine_type: str
    tags: InstanceTags
    secret: str | None
    address: str
    created_at: datetime | None


def metadata_item(metadata: compute_v1.Metadata, key: str) -> str | None:
    """The value of the metadata item ``key``, or None when there is none."""
    for item in metadata.items:
        if item.key == key:
            return str(item.value)
    return None


def address_of(raw: Any, which: Literal["internal", "external"]) -> str:
    """The internal or external IP of ``raw``, an ``Instance``'s protobuf
    message (``compute_v1.Instance.pb(instance)``); "" while it has none."""
    if not raw.network_interfaces:
        return ""
    nic = raw.network_interfaces[0]
    if which == "external":
        return str(nic.access_configs[0].nat_i_p) if nic.access_configs else ""
    return str(nic.network_i_p)


def created_at(raw: Any) -> datetime | None:
    """The creation time of ``raw``, an ``Instance``'s protobuf message;
    None when GCE gives none readable."""
    try:
        return datetime.fromisoformat(raw.creation_timestamp)
    except ValueError:
        return None


# The metadata items a listing reads.
_LISTED_ITEMS = frozenset({SET_ID_TAG, SECRET_TAG, TAGS_ITEM})


def _last_segment(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


async def get_instance(
    api: ComputeAPI, config: GCEConfig, zone: str, name: str
) -> compute_v1.Instance:
    """``instances.get``: raises NotFoundError when there is no such instance."""
    return await api.call(
        "instances.get",
        lambda c: c.instances.get(
            project=config.project,
            zone=zone,
            instance=name,
            retry=None,
            timeout=config.call_timeout,
        ),
    )


def _listed(
    config: GCEConfig,
    set_id: str,
    zone: str,
    raw: Any,
    wanted: InstanceTags,
    decoded: dict[str | None, InstanceTags | None],
) -> InstanceRecord | None:
    """What the driver keeps of ``raw`` (a listed ``Instance``'s protobuf
    message), or None when it is not one of set ``set_id``'s instances
    carrying ``wanted``. It reads the protobuf message itself, each field
    once: proto-plus wraps every field on every access, and a listing of
    thousands of instances would spend more on those wrappers than on the
    SDK's own parsing. ``decoded`` caches the tags of each tags item seen
    (a fleet's instances mostly share theirs)."""
    items: dict[str, str] = {}
    for item in raw.metadata.items:
        if item.key in _LISTED_ITEMS:
            items[item.key] = item.value
    if items.get(SET_ID_TAG) != set_id:
        return None
    text = items.get(TAGS_ITEM)
    if text in decoded:
        itags = decoded[text]
    else:
        itags = decoded[text] = decode_tags(text)
    if itags is None or any(itags.get(k) != v for k, v in wanted.items()):
        return None
    return InstanceRecord(
        name=raw.name,
        zone=zone,
        machine_type=_last_segment(raw.machine_type),
        tags=itags,
        secret=items.get(SECRET_TAG),
        address=address_of(raw, config.address),
        created_at=created_at(raw),
    )


async def list_zone(
    api: ComputeAPI, config: GCEConfig, set_id: str, zone: str, flt: str, wanted: InstanceTags
) -> list[InstanceRecord]:
    """Every instance of set ``set_id`` in ``zone`` matching the server-side
    filter ``flt`` and carrying every tag of ``wanted`` (checked on the
    metadata, the source of truth), following every ``nextPageToken``."""
    found: list[InstanceRecord] = []
    token = ""
    while True:
        request = compute_v1.ListInstancesRequest(
            project=config.project, zone=zone, filter=flt, max_results=config.list_page_size
        )
        if token:
            request.page_token = token

        def one_page(
            c: Clients, request: compute_v1.ListInstancesRequest = request
        ) -> tuple[list[InstanceRecord], str]:
            pager = c.instances.list(request=request, retry=None, timeout=config.call_timeout)
            page = compute_v1.InstanceList.pb(next(iter(pager.pages)))
            decoded: dict[str | None, InstanceTags | None] = {}
            listed = (_listed(config, set_id, zone, raw, wanted, decoded) for raw in page.items)
            return [i for i in listed if i is not None], page.next_page_token

        listed, token = await api.call("instances.list", one_page)
        found.extend(listed)
        if not token:
            return found
