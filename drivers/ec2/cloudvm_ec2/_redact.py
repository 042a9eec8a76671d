"""Keep instance secrets and credentials out of botocore's own debug logs.

At DEBUG level botocore logs every request's parameters (RunInstances
carries the instance secret in its tags and the user data), the prepared
request and the canonical request of the signature (the access key id and
the session token), and every response body (DescribeInstances and
DescribeTags return the secret tag; STS returns credentials). A filter on
those loggers replaces the arguments of their records before any handler
sees them; the message templates, and so what happened, stay.
"""

from __future__ import annotations

import logging

from botocore.model import OperationModel  # type: ignore[import-untyped]

from cloudvm.driverkit import add_log_filter

__all__ = ["REDACTED", "SDK_LOGGERS", "install_redaction"]

#: The SDK loggers whose records may carry secrets in their arguments
#: (aiobotocore logs through botocore's loggers).
SDK_LOGGERS = ("botocore.endpoint", "botocore.auth", "botocore.parsers", "botocore.awsrequest")
REDACTED = "<redacted by cloudvm-ec2>"


def _redacted(value: object) -> object:
    # Which operation a record is about is no secret, and worth keeping.
    return value if isinstance(value, OperationModel) else REDACTED


class _RedactArguments(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str):
            record.msg, record.args = REDACTED, None
        elif isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redacted(arg) for key, arg in record.args.items()}
        return True


def install_redaction() -> None:
    """Add the redacting filter to each of :data:`SDK_LOGGERS` (once)."""
    add_log_filter(SDK_LOGGERS, _RedactArguments)
