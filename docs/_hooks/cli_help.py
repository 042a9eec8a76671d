"""mkdocs hook: the ``cloudvm`` command's own ``--help``, captured at build time.

A line ``<!-- cli-help: SUBCOMMAND -->`` (or ``<!-- cli-help: -->`` for the
command itself) becomes a code block of what ``python -m cloudvm SUBCOMMAND
--help`` prints, so the CLI page shows the options the installed command has.
A failure is a warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from typing import Any

__all__ = ["cli_help", "on_page_markdown"]

log = logging.getLogger("mkdocs.hooks.cli_help")

MARKER = re.compile(r"^<!-- cli-help:((?: [a-z-]+)*) -->$", re.MULTILINE)
WIDTH = 78


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace every cli-help marker of ``page`` with the help text."""
    return MARKER.sub(lambda match: cli_help(match[1].split(), where=page.file.src_uri), markdown)


def cli_help(subcommand: list[str], *, where: str) -> str:
    """A fenced block of ``cloudvm SUBCOMMAND --help``."""
    command = [sys.executable, "-m", "cloudvm", *subcommand, "--help"]
    env = {**os.environ, "COLUMNS": str(WIDTH), "NO_COLOR": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    if result.returncode != 0:
        log.warning(f"{where}: {' '.join(command[2:])} failed: {result.stderr.strip()}")
    return "```text\n" + result.stdout.rstrip() + "\n```"
