"""How arbitrary tags live on a GCE instance.

GCE labels take only ``[a-z0-9_-]`` (keys start with a letter; both at most
63 characters; 64 labels per instance), while our tags are arbitrary strings.
So the tags are stored twice:

* losslessly, as one JSON object in the instance metadata item
  :data:`TAGS_ITEM` (the source of truth for ``Instance.tags``);
* as derived labels — a readable slug plus a hash of the original string —
  so that ``instances(tags)`` can filter server-side. Distinct strings give
  distinct labels except for hash collisions, which the exact client-side
  filter on the metadata catches.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from cloudvm import InstanceTags
from cloudvm.driverkit import SET_ID_TAG, validate_tags

__all__ = [
    "MAX_USER_TAGS",
    "TAGS_ITEM",
    "decode_tags",
    "encode_tags",
    "gce_tags",
    "label_filter",
    "labels_for",
]

#: The metadata item holding the user's tags as a JSON object.
TAGS_ITEM = "cloudvm-tags"
# GCE allows 64 labels; one is the set id.
MAX_USER_TAGS = 63
_UNSAFE = re.compile(r"[^a-z0-9_-]")
_HASH_CHARS = 12  # hex digits of sha256: 48 bits


def gce_tags(tags: object, *, field: str = "tags") -> InstanceTags:
    """``validate_tags``, then GCE's own limit: at most :data:`MAX_USER_TAGS`
    tags (one label of the 64 is the set id's). ValueError naming ``field``."""
    checked = validate_tags(tags, field=field)
    if len(checked) > MAX_USER_TAGS:
        raise ValueError(f"{field}: GCE allows at most {MAX_USER_TAGS} tags per instance")
    return checked


def _slug(text: str, size: int) -> str:
    return _UNSAFE.sub("_", text.lower())[:size]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_CHARS]


def label_key(key: str) -> str:
    """The label key for tag key ``key``: ``c-<slug>-<hash>``, at most 57 chars."""
    return f"c-{_slug(key, 42)}-{_digest(key)}"


def label_value(value: str) -> str:
    """The label value for tag value ``value``: ``<slug>-<hash>``, at most 50 chars."""
    return f"{_slug(value, 37)}-{_digest(value)}"


def labels_for(set_id: str, tags: Mapping[str, str]) -> dict[str, str]:
    """Every label an instance of set ``set_id`` carrying ``tags`` has."""
    labels = {label_key(SET_ID_TAG): label_value(set_id)}
    labels.update((label_key(k), label_value(v)) for k, v in tags.items())
    return labels


def label_filter(set_id: str, tags: Mapping[str, str]) -> str:
    """A Compute list ``filter`` matching instances that carry every label of
    ``labels_for(set_id, tags)``; expressions in parentheses are ANDed."""
    return " AND ".join(
        f'(labels.{key} = "{value}")' for key, value in sorted(labels_for(set_id, tags).items())
    )


def encode_tags(tags: Mapping[str, str]) -> str:
    """The :data:`TAGS_ITEM` metadata value for ``tags``."""
    return json.dumps(dict(tags), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def decode_tags(value: str | None) -> InstanceTags | None:
    """The tags in a :data:`TAGS_ITEM` value, or None when it is missing or
    not a JSON object of strings (not an instance this driver made)."""
    if value is None:
        return None
    try:
        decoded = json.loads(value)
    except ValueError:
        return None
    if not isinstance(decoded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in decoded.items()
    ):
        return None
    return dict(decoded)
