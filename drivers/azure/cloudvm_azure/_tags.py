"""The set's own tags and what Azure allows in the caller's."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from cloudvm import InstanceTags
from cloudvm.driverkit import SECRET_TAG, SET_ID_TAG, validate_tags

__all__ = [
    "CREATED_AT_TAG",
    "FORBIDDEN_TAG_NAME_CHARS",
    "MAX_TAGS",
    "OWN_TAGS",
    "OWN_VM_TAGS",
    "azure_tags",
    "created_at",
]

#: The tag carrying the UTC creation time (ISO 8601) on every resource a set creates.
CREATED_AT_TAG = "cloudvm-created-at"
#: Azure's limit of tags on one resource.
MAX_TAGS = 50
#: Characters Azure refuses in tag names.
FORBIDDEN_TAG_NAME_CHARS = frozenset("<>%&\\?/")
#: On every resource the set makes.
OWN_TAGS = (SET_ID_TAG, CREATED_AT_TAG)
#: On every VM the set makes.
OWN_VM_TAGS = (*OWN_TAGS, SECRET_TAG)


def azure_tags(tags: object, *, room: int, field: str = "tags") -> InstanceTags:
    """``validate_tags``, then what Azure itself refuses, before any call:
    tag names holding any of ``< > % & \\ ? /``, and more tags than fit on
    a resource beside the set's own (``room``). ValueError naming the key."""
    checked = validate_tags(tags, field=field)
    for key in checked:
        bad = sorted(FORBIDDEN_TAG_NAME_CHARS.intersection(key))
        if bad:
            raise ValueError(
                f"{field}: key {key[:40]!r} holds {' '.join(bad)}, which Azure "
                "refuses in tag names (< > % & \\ ? /)"
            )
    if len(checked) > room:
        raise ValueError(
            f"{field}: {len(checked)} tags, but Azure allows {MAX_TAGS} on a resource "
            f"and the set's own take {MAX_TAGS - room}: at most {room}"
        )
    return checked


def created_at(tags: Any, fallback: Any) -> datetime | None:
    """When a resource was made: its created-at tag, else ``fallback``
    (Azure's ``timeCreated``), as an aware datetime; None when neither reads."""
    for text in ((tags or {}).get(CREATED_AT_TAG), fallback):
        if isinstance(text, str):
            with contextlib.suppress(ValueError):
                when = datetime.fromisoformat(text.replace("Z", "+00:00"))
                return when if when.tzinfo else when.replace(tzinfo=UTC)
    return None
