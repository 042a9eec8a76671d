"""The fake cloud's config: every knob, validated, with its default.

Every key (all optional; ``{}`` is a valid config)::

    cloud             name of the process-wide fake cloud a ``load_driver("fake")``
                      set joins (created on first use): "default"
    ssh               back every instance with a real in-process SSH server: false
    remote_user       the user instances accept logins for: "root"
    latency           seconds each API call takes, per operation:
                      {"create": 0, "instances": 0, "set_tags": 0, "destroy": 0}
    boot_delay        seconds after create before an instance has an address: 0
    listing_delay     seconds after create before listings show the instance
                      (eventual consistency): 0
    tag_delay         seconds after set_tags before listings show the new tags
                      (until then they show the old ones): 0
    rate_limits       token buckets per kind of call, or null for no throttling:
                      {"create": {"burst": 5, "refill": 2},     # EC2 RunInstances
                       "list": {"burst": 100, "refill": 20},    # EC2 non-mutating
                       "other": {"burst": 200, "refill": 5}}    # EC2 mutating
                      (a kind set to null is never throttled)
    quotas            per quota group, {"instances": N, "vcpus": N} (either may be
                      null: unlimited): {}
    default_quota     the quota of every group not in ``quotas``: unlimited
    quota_groups      provider type -> quota group; unlisted types are "standard";
                      preemptible types get the suffix "-spot": {}
    capacity_shortage where the cloud has no capacity now:
                      {"instance_types": [provider types],   # type-specific
                       "quota_groups": [groups],             # group-specific
                       "everywhere": false}                  # neither
    failure_rates     probability that a call fails with InjectedError, doing
                      nothing: {"create": 0, "set_tags": 0, "destroy": 0}
    lost_responses    probability that a call takes effect and then raises
                      LostResponseError: {"create": 0, "set_tags": 0, "destroy": 0}
    seed              seed of the random draws for the two rates above; null
                      means a fresh seed each time

Throttling comes first: a throttled call has no effect. Then, for ``create``,
capacity, quota and the failure rate are checked in that order.
"""

from __future__ import annotations

import pydantic

__all__ = [
    "CapacityShortage",
    "FakeConfig",
    "OperationDelays",
    "OperationRates",
    "QuotaLimit",
    "RateLimits",
    "TokenBucket",
]

_MAX_DELAY = 86400.0  # seconds; anything longer is surely a unit mistake


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class TokenBucket(_Model):
    """A token bucket: ``burst`` calls at once, then ``refill`` more per second.

    Each call takes one token; a call that finds none is refused with
    RateLimitError and takes nothing.
    """

    burst: int = pydantic.Field(ge=1)
    refill: float = pydantic.Field(gt=0.0)


class RateLimits(_Model):
    """One bucket per kind of call; ``None`` never throttles that kind.

    ``create`` is ``create``; ``list`` is ``instances``; ``other`` is
    ``set_tags`` and ``destroy``. The defaults are shaped like EC2's.
    """

    create: TokenBucket | None = TokenBucket(burst=5, refill=2.0)
    list: TokenBucket | None = TokenBucket(burst=100, refill=20.0)
    other: TokenBucket | None = TokenBucket(burst=200, refill=5.0)


class QuotaLimit(_Model):
    """The most instances and vCPUs one quota group may hold; None: unlimited."""

    instances: int | None = pydantic.Field(default=None, ge=0)
    vcpus: int | None = pydantic.Field(default=None, ge=0)


class CapacityShortage(_Model):
    """Where ``create`` answers CapacityError.

    A provider type in ``instance_types`` fails with
    ``instance_type_specific=True``; a type whose quota group is in
    ``quota_groups`` fails with ``quota_group_specific=True``; ``everywhere``
    fails every create with both flags false.
    """

    instance_types: frozenset[str] = frozenset()
    quota_groups: frozenset[str] = frozenset()
    everywhere: bool = False


class OperationDelays(_Model):
    """Seconds each API operation takes (the round trip), by InstanceSet /
    Instance method name."""

    create: float = pydantic.Field(default=0.0, ge=0.0, le=_MAX_DELAY)
    instances: float = pydantic.Field(default=0.0, ge=0.0, le=_MAX_DELAY)
    set_tags: float = pydantic.Field(default=0.0, ge=0.0, le=_MAX_DELAY)
    destroy: float = pydantic.Field(default=0.0, ge=0.0, le=_MAX_DELAY)


class OperationRates(_Model):
    """A probability (0 to 1) per mutating operation."""

    create: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    set_tags: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    destroy: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)


class FakeConfig(_Model):
    """Config of the ``fake`` driver; see the module docstring for every key.

    It is a frozen value: change a running cloud's knobs with
    :meth:`cloudvm.testing.FakeCloud.configure`.
    """

    cloud: str = pydantic.Field(default="default", min_length=1)
    ssh: bool = False
    remote_user: str = pydantic.Field(default="root", min_length=1)
    latency: OperationDelays = OperationDelays()
    boot_delay: float = pydantic.Field(default=0.0, ge=0.0, le=_MAX_DELAY)
    listing_delay: float = pydantic.Field(default=0.0, ge=0.0, le=_MAX_DELAY)
    tag_delay: float = pydantic.Field(default=0.0, ge=0.0, le=_MAX_DELAY)
    rate_limits: RateLimits | None = RateLimits()
    quotas: dict[str, QuotaLimit] = {}
    default_quota: QuotaLimit = QuotaLimit()
    quota_groups: dict[str, str] = {}
    capacity_shortage: CapacityShortage = CapacityShortage()
    failure_rates: OperationRates = OperationRates()
    lost_responses: OperationRates = OperationRates()
    seed: int | None = None
