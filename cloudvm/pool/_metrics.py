"""The pool's optional prometheus metrics."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from .._metrics import import_prometheus
from ._config import WorkerState

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["PoolMetrics"]

# One set of collectors per registry: a registry refuses a second collector of
# one name, and several pools may share a registry (their figures add up).
_collectors: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()

# Boot times span seconds (a fake) to many minutes (a GPU image on a busy cloud).
_BOOT_BUCKETS = (1, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1200, 1800)
_WAIT_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _collectors_for(registry: prometheus_client.CollectorRegistry) -> dict[str, Any]:
    try:
        return _collectors[registry]
    except KeyError:
        pass
    prometheus_client = import_prometheus()
    made = {
        "workers": prometheus_client.Gauge(
            "cloudvm_pool_workers",
            "Workers held by cloudvm pools, by instance type and state.",
            ["instance_type", "state"],
            registry=registry,
        ),
        "creates": prometheus_client.Counter(
            "cloudvm_pool_creates",
            "Creates started by cloudvm pools, by instance type and outcome.",
            ["instance_type", "outcome"],
            registry=registry,
        ),
        "destroys": prometheus_client.Counter(
            "cloudvm_pool_destroys",
            "Destroy calls made by cloudvm pools, by outcome.",
            ["outcome"],
            registry=registry,
        ),
        "probes": prometheus_client.Counter(
            "cloudvm_pool_probes",
            "Probes run by cloudvm pools, by outcome.",
            ["outcome"],
            registry=registry,
        ),
        "boot": prometheus_client.Histogram(
            "cloudvm_pool_boot_seconds",
            "Seconds from create to the first successful probe.",
            ["instance_type"],
            buckets=_BOOT_BUCKETS,
            registry=registry,
        ),
        "lease_wait": prometheus_client.Histogram(
            "cloudvm_pool_lease_wait_seconds",
            "Seconds a lease waited for an idle worker.",
            ["instance_type"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        ),
    }
    _collectors[registry] = made
    return made


class PoolMetrics:
    """Records a pool's figures; with ``registry=None`` it records nothing.

    Outcomes: creates ``ok``, ``quota``, ``capacity``, ``rate_limited``,
    ``error`` (the instance may exist: the next listing tells); destroys
    ``ok``, ``error``; probes ``ok``, ``failed``, ``host_key`` (unprovable),
    ``timeout``.
    """

    def __init__(self, registry: prometheus_client.CollectorRegistry | None) -> None:
        self._c = None if registry is None else _collectors_for(registry)

    def moved(self, type_name: str, old: WorkerState | None, new: WorkerState | None) -> None:
        if self._c is None:
            return
        gauge = self._c["workers"]
        if old is not None:
            gauge.labels(type_name, old.value).dec()
        if new is not None:
            gauge.labels(type_name, new.value).inc()

    def create(self, type_name: str, outcome: str) -> None:
        if self._c is not None:
            self._c["creates"].labels(type_name, outcome).inc()

    def destroy(self, outcome: str) -> None:
        if self._c is not None:
            self._c["destroys"].labels(outcome).inc()

    def probe(self, outcome: str) -> None:
        if self._c is not None:
            self._c["probes"].labels(outcome).inc()

    def booted(self, type_name: str, seconds: float) -> None:
        if self._c is not None:
            self._c["boot"].labels(type_name).observe(max(seconds, 0.0))

    def lease_waited(self, type_name: str, seconds: float) -> None:
        if self._c is not None:
            self._c["lease_wait"].labels(type_name).observe(max(seconds, 0.0))
