"""The EC2 driver's own prometheus metrics, on top of cloudvm's API-call ones."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cloudvm.driverkit import CallMetrics

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["EC2Metrics"]

# One set of collectors per registry, since a registry refuses a second
# collector of one name and several InstanceSets may share a registry.
_collectors: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def _collectors_for(registry: prometheus_client.CollectorRegistry) -> tuple[Any, Any]:
    try:
        return _collectors[registry]
    except KeyError:
        pass
    import prometheus_client  # CallMetrics already said how to install it

    per_subnet = prometheus_client.Gauge(
        "cloudvm_ec2_instances",
        "Instances of this InstanceSet per subnet, as of the last full listing.",
        ["instance_set", "subnet_id"],
        registry=registry,
    )
    starts = prometheus_client.Counter(
        "cloudvm_ec2_instance_starts",
        "RunInstances attempts per subnet, by success.",
        ["instance_set", "subnet_id", "success"],
        registry=registry,
    )
    _collectors[registry] = (per_subnet, starts)
    return per_subnet, starts


class EC2Metrics:
    """API calls by operation and outcome (``cloudvm_api_calls``), instances
    per subnet and instance starts per subnet and success. With
    ``registry=None`` it records nothing."""

    def __init__(
        self, registry: prometheus_client.CollectorRegistry | None, instance_set: str
    ) -> None:
        self.calls = CallMetrics(registry, "ec2")
        self._set = instance_set
        self._collectors = None if registry is None else _collectors_for(registry)
        self._subnets_seen: set[str] = set()

    def instance_start(self, subnet_id: str, success: bool) -> None:
        """Count one RunInstances attempt in ``subnet_id`` ("" for the default)."""
        if self._collectors is not None:
            self._collectors[1].labels(self._set, subnet_id, str(success).lower()).inc()

    def instances_per_subnet(self, counts: Mapping[str, int]) -> None:
        """Publish a full listing's count per subnet; subnets that emptied
        since the last one drop to zero."""
        if self._collectors is None:
            return
        gauge = self._collectors[0]
        for subnet in self._subnets_seen - counts.keys():
            gauge.labels(self._set, subnet).set(0)
        for subnet, count in counts.items():
            gauge.labels(self._set, subnet).set(count)
        self._subnets_seen |= counts.keys()
