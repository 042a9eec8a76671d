"""Keep instance secrets out of google-cloud-compute's own debug logs.

At DEBUG level the SDK's REST transports log every request and response
payload (``httpRequest`` / ``httpResponse`` extras). Instance payloads carry
the metadata: the per-instance secret and the startup script. A filter on
those loggers replaces the payloads before any handler sees them.
"""

from __future__ import annotations

import logging

from cloudvm.driverkit import add_log_filter

__all__ = ["SDK_LOGGERS", "install_redaction"]

#: The SDK loggers whose records may carry instance metadata.
SDK_LOGGERS = (
    "google.cloud.compute_v1.services.instances.transports.rest",
    "google.cloud.compute_v1.services.zone_operations.transports.rest",
)
_REDACTED = "<redacted by cloudvm-gce>"
_PAYLOAD_ATTRS = ("httpRequest", "httpResponse", "request", "response")


class _RedactPayloads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for attr in _PAYLOAD_ATTRS:
            value = getattr(record, attr, None)
            if isinstance(value, dict) and "payload" in value:
                setattr(record, attr, {**value, "payload": _REDACTED})
            elif isinstance(value, str) and attr in ("request", "response"):
                setattr(record, attr, _REDACTED)
        return True


def install_redaction() -> None:
    """Add the redacting filter to each of :data:`SDK_LOGGERS` (once)."""
    add_log_filter(SDK_LOGGERS, _RedactPayloads)
