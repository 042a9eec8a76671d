"""EC2 instance quota groups: which vCPU quota an instance type draws from."""

from __future__ import annotations

import re
from collections.abc import Mapping

from cloudvm import InstanceQuotaGroup

__all__ = ["QUOTA_GROUPS", "quota_group"]

#: Instance family prefix -> quota group, after AWS's "Running On-Demand ...
#: instances" and "All ... Spot Instance Requests" quotas. A key may carry a
#: generation ("p5") when that generation has a quota of its own.
QUOTA_GROUPS: Mapping[str, str] = {
    **dict.fromkeys("acdhimrtz", "standard"),
    "f": "f",
    "g": "g",
    "vt": "g",
    "inf": "inf",
    "p": "p",
    "p5": "p5",
    "x": "x",
    "dl": "dl",
    "trn": "trn",
    "u": "u",
    "hpc": "hpc",
    "mac": "mac",
}

_FAMILY = re.compile(r"([a-z]+)([0-9]*)")


def quota_group(
    provider_type: str, preemptible: bool, table: Mapping[str, str] = QUOTA_GROUPS
) -> InstanceQuotaGroup:
    """The quota group of ``provider_type`` (``"m5.large"`` -> ``"standard"``;
    ``"-spot"`` appended when ``preemptible``, as spot and on-demand quotas are
    separate).

    The family with its generation (``"p5"``) is looked up first, then the
    alphabetic prefix (``"p"``); a family the table lacks is its own group
    (its alphabetic prefix), which is the safe guess: it runs out alone.
    Works on any string, since dispatchers ask before any create.
    """
    match = _FAMILY.match(provider_type.strip().lower())
    if match is None:
        group = provider_type.strip().lower() or "unknown"
    else:
        letters, generation = match.groups()
        group = table.get(letters + generation) or table.get(letters) or letters
    return InstanceQuotaGroup(f"{group}-spot" if preemptible else group)
