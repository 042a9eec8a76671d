"""Text that came from somewhere we do not trust, made safe to show.

An unproven SSH server chooses its channel-refusal reasons and banners; a
cloud account's tags can hold anything another user of the account wrote.
Echoed raw into an error message, a log or a terminal, such text can carry
ANSI/OSC escape sequences (C0 ``ESC`` or the single-byte C1 ``CSI`` U+009B)
that rewrite the screen or the clipboard. :func:`printable` escapes them.
"""

from __future__ import annotations

import unicodedata

__all__ = ["has_control_chars", "printable"]

# Unicode categories never shown raw: controls (C0, DEL, C1), format
# characters (bidi overrides, zero-width joiners), line/paragraph separators,
# surrogates, private use and unassigned code points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _is_unsafe(ch: str) -> bool:
    code = ord(ch)
    if code < 0x7F:
        return code < 0x20
    return code <= 0x9F or unicodedata.category(ch) in _UNSAFE_CATEGORIES


def has_control_chars(text: str) -> bool:
    """True when ``text`` holds a C0 or C1 control character or DEL
    (U+0000-U+001F, U+007F-U+009F)."""
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in text)


def printable(text: str | bytes, *, limit: int = 200) -> str:
    """``text`` with every control, format or otherwise invisible character
    written as a ``\\x..`` / ``\\u....`` escape, cut to ``limit`` characters
    (marked with "..."). Bytes are decoded as UTF-8 with invalid sequences
    escaped. Safe to put in an exception message, a log record or a terminal.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="backslashreplace")
    cut = len(text) > limit
    text = text[:limit]
    if any(_is_unsafe(ch) for ch in text):
        text = "".join(_escape(ch) if _is_unsafe(ch) else ch for ch in text)
    return text + "..." if cut else text


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
