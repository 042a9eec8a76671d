"""Replacing an instance's tags takes two EC2 calls: this plans them, and
the calls that would undo them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["TagChange", "plan_tag_change"]


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
