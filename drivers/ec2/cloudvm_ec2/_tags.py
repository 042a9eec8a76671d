"""EC2 tags: EC2's own rules for them, their form on the wire, and the plan
of replacing an instance's tags (two EC2 calls) with the calls that undo it."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

__all__ = ["TagChange", "check_ec2_tags", "escape_filter_value", "plan_tag_change", "tag_list"]

_MAX_TAGS = 50  # per EC2 resource
# Instance tags readable through IMDS may use only these characters in keys
# (EC2 refuses to launch or tag otherwise when InstanceMetadataTags is on).
_IMDS_TAG_KEY = re.compile(r"^[A-Za-z0-9+\-=.,_:@]+$")
_IMDS_FORBIDDEN_KEYS = frozenset({".", "..", "_index"})
# EC2 filter values treat these as wildcards unless escaped with a backslash.
_FILTER_SPECIALS = re.compile(r"([\\*?])")


def check_ec2_tags(tags: Mapping[str, str], *, field: str, imds: bool, reserved: int) -> None:
    """EC2's own tag rules, on top of cloudvm's (already checked): at most
    50 per resource counting the ``reserved`` ones cloudvm adds, no ``aws:``
    prefix, and with ``imds`` only keys the metadata service can serve.
    Raises ValueError naming ``field`` and the key."""
    if len(tags) + reserved > _MAX_TAGS:
        raise ValueError(
            f"{field}: EC2 allows {_MAX_TAGS} tags per instance and cloudvm uses {reserved}; "
            f"{len(tags)} given"
        )
    for key in tags:
        if key.lower().startswith("aws:"):
            raise ValueError(f"{field}: key {key!r}: the 'aws:' prefix is reserved by AWS")
        if imds and (not _IMDS_TAG_KEY.match(key) or key in _IMDS_FORBIDDEN_KEYS):
            raise ValueError(
                f"{field}: key {key!r} cannot be an EC2 instance tag readable through the "
                "metadata service (letters, digits and + - = . , _ : @ only). Use other "
                'keys, or the config secret_storage="user-data"'
            )


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    """``tags`` as EC2's ``[{"Key": ..., "Value": ...}]``."""
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def escape_filter_value(value: str) -> str:
    """``value`` matched literally by an EC2 filter (``*``, ``?`` and ``\\``
    escaped)."""
    return _FILTER_SPECIALS.sub(r"\\\1", value)


@dataclasses.dataclass(frozen=True)
class TagChange:
    """What CreateTags must set (``put``) and DeleteTags must remove (``drop``)."""

    put: dict[str, str]
    drop: list[str]


def plan_tag_change(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[TagChange, TagChange]:
    """The change from ``old`` to ``new`` and the one back.

    Both are idempotent and work from any state in between (one call done,
    or one call done in part): the way back puts back every old value that
    was changed or removed and removes every key that was added.
    """
    forward = TagChange(
        put={k: v for k, v in new.items() if old.get(k) != v},
        drop=[k for k in old if k not in new],
    )
    back = TagChange(
        put={k: v for k, v in old.items() if new.get(k) != v},
        drop=[k for k in new if k not in old],
    )
    return forward, back
