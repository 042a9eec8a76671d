"""Optional prometheus metrics for a driver's cloud calls."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import prometheus_client

__all__ = ["CallMetrics", "import_prometheus"]

# One set of collectors per registry: a registry refuses a second collector of
# the same name, and several InstanceSets may share one registry.
_collectors: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def import_prometheus() -> Any:
    """The prometheus_client module, for code that was given a registry; a
    RuntimeError saying what to install when it is missing."""
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "a metrics registry was given but prometheus_client is not installed. "
            "Install it with: pip install 'aiocloudvm[metrics]'"
        ) from None
    return prometheus_client


def _collectors_for(registry: prometheus_client.CollectorRegistry) -> tuple[Any, Any]:
    try:
        return _collectors[registry]
    except KeyError:
        pass
    prometheus_client = import_prometheus()
    calls = prometheus_client.Counter(
        "cloudvm_api_calls",
        "Cloud API calls made by cloudvm drivers, by outcome.",
        ["driver", "operation", "outcome"],
        registry=registry,
    )
    seconds = prometheus_client.Histogram(
        "cloudvm_api_call_duration_seconds",
        "Duration of cloud API calls made by cloudvm drivers.",
        ["driver", "operation"],
        registry=registry,
    )
    _collectors[registry] = (calls, seconds)
    return calls, seconds


class CallMetrics:
    """Counts a driver's cloud calls by operation and outcome and times them.

    ``outcome`` is ``"ok"``, ``"cancelled"`` or the name of the exception's
    class (``"RateLimitError"``). With ``registry=None`` it records nothing.
    """

    def __init__(self, registry: prometheus_client.CollectorRegistry | None, driver: str) -> None:
        self._driver = driver
        self._collectors = None if registry is None else _collectors_for(registry)

    @contextlib.contextmanager
    def observe(self, operation: str) -> Iterator[None]:
        """Time the block and count it under ``operation``."""
        if self._collectors is None:
            yield
            return
        calls, seconds = self._collectors
        started = time.monotonic()
        outcome = "ok"
        try:
            yield
        except BaseException as exc:
            outcome = "cancelled" if _is_cancellation(exc) else type(exc).__name__
            raise
        finally:
            seconds.labels(self._driver, operation).observe(time.monotonic() - started)
            calls.labels(self._driver, operation, outcome).inc()


def _is_cancellation(exc: BaseException) -> bool:
    # cloudvm runs on asyncio (DESIGN.md); this also works outside a running loop.
    return isinstance(exc, asyncio.CancelledError)
