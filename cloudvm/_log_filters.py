"""Filters on the loggers of the SDKs a driver calls."""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["add_log_filter"]


def add_log_filter(logger_names: Iterable[str], filter_type: type[logging.Filter]) -> None:
    """Add a ``filter_type()`` to each logger of ``logger_names`` that has
    no filter of that type yet: idempotent, so a driver may call it for
    every set it opens. Drivers use it to redact what an SDK's own debug
    records carry (instance secrets, user data, credentials): a logger's
    filter sees each record logged there before any handler does, whatever
    handlers and levels are configured later."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, filter_type) for f in logger.filters):
            logger.addFilter(filter_type())
