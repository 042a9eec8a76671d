"""Input checks every driver runs before any cloud call."""

from __future__ import annotations

import difflib
import hmac
import secrets
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic

from ._errors import ConfigError, HostKeyError
from ._text import has_control_chars, printable
from ._types import InitCommand, InstanceTags

__all__ = [
    "MAX_INIT_COMMAND_BYTES",
    "MAX_TAG_KEY_CHARS",
    "MAX_TAG_VALUE_CHARS",
    "RESERVED_TAG_PREFIX",
    "SECRET_TAG",
    "SET_ID_TAG",
    "check_secret",
    "new_secret",
    "parse_config",
    "validate_init_command",
    "validate_tags",
]

MAX_INIT_COMMAND_BYTES = 1023  # "under 1 KiB", UTF-8 encoded
# The tightest limits among the clouds we support (EC2: 128 / 256 characters),
# so a tag set that works on one cloud works on all of them.
MAX_TAG_KEY_CHARS = 128
MAX_TAG_VALUE_CHARS = 256
#: Tag keys drivers keep for their own bookkeeping (the set id, secrets).
#: Users may not set them, and ``Instance.tags`` does not show them.
RESERVED_TAG_PREFIX = "cloudvm-"
#: The tag carrying the InstanceSetID on every instance and resource a set creates.
SET_ID_TAG = "cloudvm-instance-set"
#: The tag (or metadata key) carrying the per-instance secret that proves the host.
SECRET_TAG = "cloudvm-secret"

_Model = TypeVar("_Model", bound=pydantic.BaseModel)


def validate_tags(tags: object, *, field: str = "tags") -> InstanceTags:
    """Return a plain-dict copy of ``tags`` or raise ValueError naming the bad
    key. Keys are non-empty strings of at most 128 characters without control
    characters and without the reserved ``cloudvm-`` prefix; values are strings
    of at most 256 characters without control characters (empty is allowed).
    Control characters are C0 (U+0000-U+001F, tab and newline included), DEL
    and C1 (U+0080-U+009F), any of which a terminal may act on."""
    if not isinstance(tags, Mapping):
        raise TypeError(f"{field} must be a mapping of str to str, not {type(tags).__name__}")
    checked: InstanceTags = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{field}: every key must be a non-empty string, got {key!r}")
        if len(key) > MAX_TAG_KEY_CHARS or has_control_chars(key):
            raise ValueError(
                f"{field}: key {key[:40]!r} must be at most {MAX_TAG_KEY_CHARS} "
                "characters without control characters"
            )
        if key.startswith(RESERVED_TAG_PREFIX):
            raise ValueError(
                f"{field}: key {key!r} uses the prefix {RESERVED_TAG_PREFIX!r}, "
                "which cloudvm keeps for its own tags"
            )
        if not isinstance(value, str):
            raise ValueError(f"{field}[{key!r}] must be a string, not {type(value).__name__}")
        if len(value) > MAX_TAG_VALUE_CHARS or has_control_chars(value):
            raise ValueError(
                f"{field}[{key!r}] must be at most {MAX_TAG_VALUE_CHARS} characters "
                "without control characters"
            )
        checked[key] = value
    return checked


def validate_init_command(init_command: object) -> InitCommand:
    """Return ``init_command`` or raise ValueError if it is not a string under
    1 KiB (UTF-8) without NUL characters."""
    if not isinstance(init_command, str):
        raise TypeError(f"init_command must be a string, not {type(init_command).__name__}")
    size = len(init_command.encode("utf-8"))
    if size > MAX_INIT_COMMAND_BYTES:
        raise ValueError(
            f"init_command is {size} bytes; it must be under 1 KiB "
            f"({MAX_INIT_COMMAND_BYTES} bytes at most)"
        )
    if "\0" in init_command:
        raise ValueError("init_command must not contain NUL characters")
    return InitCommand(init_command)


def parse_config(
    model: type[_Model], config: Mapping[str, Any] | str | bytes, *, driver: str
) -> _Model:
    """Validate a driver's raw config (a mapping, or a JSON document) with a
    pydantic model. Raises ConfigError naming every bad field; the message never
    repeats the values given, since they may be credentials."""
    try:
        if isinstance(config, (str, bytes)):
            return model.model_validate_json(config)
        if not isinstance(config, Mapping):
            raise ConfigError(
                f"{driver} config must be a mapping or a JSON document, not {type(config).__name__}"
            )
        return model.model_validate(dict(config))
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{printable('.'.join(str(part) for part in err['loc'])) or '(document)'}: "
            f"{err['msg']}{_suggestion(model, err)}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"invalid {driver} config: {problems}") from None


def _model_in(annotation: object) -> type[pydantic.BaseModel] | None:
    """The pydantic model an annotation holds (``Model`` or ``Model | None``)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
            return candidate
    return None


def _suggestion(model: type[pydantic.BaseModel], error: Any) -> str:
    """`` (did you mean 'region'?)`` for an unknown key close to a real one."""
    if error["type"] != "extra_forbidden" or not error["loc"]:
        return ""
    *parents, key = (str(part) for part in error["loc"])
    fields: type[pydantic.BaseModel] | None = model
    for part in parents:  # down through nested models; lists and dicts end it
        info = fields.model_fields.get(part) if fields is not None else None
        fields = _model_in(info.annotation if info is not None else None)
    if fields is None:
        return ""
    names = [info.alias or name for name, info in fields.model_fields.items()]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def new_secret() -> str:
    """A fresh random per-instance secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def check_secret(presented: str | bytes, expected: str | None) -> None:
    """Return None when ``presented`` (surrounding whitespace ignored) equals
    ``expected``, compared in constant time so that timing reveals nothing of
    the secret. Raise HostKeyError otherwise, and when either is empty: an
    empty or missing (None) expected secret proves nothing, and neither does
    an empty answer."""
    if not expected:
        raise HostKeyError("there is no secret to check the host against; it proves nothing")
    got = presented.encode("utf-8") if isinstance(presented, str) else presented
    got = got.strip()
    if not got:
        raise HostKeyError("the host presented an empty instance secret")
    if not hmac.compare_digest(got, expected.encode("utf-8")):
        raise HostKeyError("the host presented the wrong instance secret")
