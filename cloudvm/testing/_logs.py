"""Every log record of the process, at DEBUG, for tests that look for secrets."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["LogCapture", "capture_every_log"]


class LogCapture(logging.Handler):
    """Collects every record it is given, formatted (exception text included)
    and as the record's whole ``__dict__``, so that a secret hidden in an
    argument, an ``extra=`` field or a traceback is seen too."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        #: Every record, in order.
        self.records: list[logging.LogRecord] = []
        #: Two lines per record: formatted, and ``repr(record.__dict__)``.
        self.lines: list[str] = []
        self._seen: set[int] = set()

    def emit(self, record: logging.LogRecord) -> None:
        # Attached to every logger, it may see a record once per ancestor.
        # (The records are kept, so their ids are not reused meanwhile.)
        if id(record) in self._seen:
            return
        self._seen.add(id(record))
        self.records.append(record)
        self.lines.append(self.format(record))
        self.lines.append(repr(record.__dict__))

    def containing(self, text: str) -> list[str]:
        """The collected lines in which ``text`` appears (empty: none)."""
        return [line for line in self.lines if text in line]


@contextlib.contextmanager
def capture_every_log() -> Iterator[LogCapture]:
    """Put every logger of the process at DEBUG and collect each record once,
    for as long as the block runs; levels and handlers are put back after.

    The capture is attached to the root and to every logger that exists
    (placeholders for a package's children included), so that one that stops
    propagating inside the block is still seen (google-api-core makes
    ``google`` such a logger on a client's first use); loggers first made
    inside the block are caught through the root. Use it around a whole
    create / list / verify / destroy cycle and assert that
    ``capture.containing(secret)`` is empty.
    """
    capture = LogCapture()
    known = list(logging.Logger.manager.loggerDict)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in known)]
    levels = [(lg, lg.level) for lg in loggers]
    attached = loggers
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    for lg in attached:
        lg.addHandler(capture)
    try:
        yield capture
    finally:
        for lg in attached:
            lg.removeHandler(capture)
        for lg, level in levels:
            lg.setLevel(level)
