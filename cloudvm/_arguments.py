"""The argument checks of ``Driver.instance_set`` and ``InstanceSet.create``,
which every driver runs before its first cloud call.

One place for them, so that every driver refuses the same bad input with
the same message naming the argument, and a driver adds only the limits of
its own cloud (through ``check_tags`` and ``image_id_is``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import asyncssh
import pydantic

from ._drivers import driver_func
from ._protocols import Driver, InstanceSet
from ._types import (
    ImageID,
    InitCommand,
    InstanceSetID,
    InstanceTags,
    InstanceType,
    SharedResourceTags,
)
from ._validate import parse_config, validate_init_command, validate_tags

if TYPE_CHECKING:
    import prometheus_client

__all__ = [
    "CreateArguments",
    "SetArguments",
    "check_create_arguments",
    "check_set_arguments",
    "config_driver",
]

_Model = TypeVar("_Model", bound=pydantic.BaseModel)


@dataclasses.dataclass(frozen=True, slots=True)
class CreateArguments:
    """The arguments of :meth:`cloudvm.InstanceSet.create`, checked
    (:func:`check_create_arguments`): ``tags`` is a plain-dict copy."""

    itype: InstanceType
    image_id: ImageID
    tags: InstanceTags
    init_command: InitCommand
    public_key: asyncssh.SSHKey | None


def check_create_arguments(
    itype: object,
    image_id: object,
    tags: object,
    init_command: object,
    public_key: object,
    *,
    image_id_is: str | None = None,
) -> CreateArguments:
    """Check what ``InstanceSet.create`` was given, in the order of its
    parameters, and return it as :class:`CreateArguments`.

    ``image_id_is`` describes the image ids the cloud takes ("an AMI id");
    when given, an empty ``image_id`` is refused with that description.
    ``tags`` are checked by :func:`validate_tags`, the rules every cloud
    shares; a driver checks its own cloud's limits on the copy returned.

    Raises TypeError (a wrong type) or ValueError (a wrong value), each naming
    the argument; nothing else, and before anything reaches a cloud.
    """
    if not isinstance(itype, InstanceType):
        raise TypeError(f"itype must be an InstanceType, not {type(itype).__name__}")
    if not isinstance(image_id, str):
        raise TypeError(f"image_id must be a string, not {type(image_id).__name__}")
    if image_id_is is not None and not image_id:
        raise ValueError(f"image_id must be a non-empty string ({image_id_is})")
    checked_tags = validate_tags(tags)
    checked_init = validate_init_command(init_command)
    if public_key is not None and not isinstance(public_key, asyncssh.SSHKey):
        raise TypeError(
            f"public_key must be an asyncssh.SSHKey or None, not {type(public_key).__name__}"
        )
    return CreateArguments(itype, ImageID(image_id), checked_tags, checked_init, public_key)


def check_set_arguments(
    model: type[_Model],
    config: Mapping[str, Any] | str | bytes,
    id: object,
    tags: object,
    *,
    driver: str,
    max_id_chars: int | None = None,
    check_tags: Callable[..., InstanceTags] = validate_tags,
) -> tuple[_Model, InstanceSetID, InstanceTags]:
    """Check what ``Driver.instance_set`` was given and return the parsed
    config, the id and a copy of the shared resource tags.

    ``config`` is parsed with ``model`` (:func:`parse_config`, ``driver``
    naming the driver in its errors); ``id`` must be a non-empty string (of
    at most ``max_id_chars`` characters when given); ``check_tags(tags,
    field="shared resource tags")`` checks the tags.

    Raises ConfigError for the config (naming every bad field, never
    repeating a value), ValueError or TypeError for the id or the tags.
    """
    parsed = parse_config(model, config, driver=driver)
    longest = f" of at most {max_id_chars} characters" if max_id_chars is not None else ""
    if not isinstance(id, str) or not id or (max_id_chars is not None and len(id) > max_id_chars):
        raise ValueError(f"the InstanceSetID must be a non-empty string{longest}")
    shared = check_tags(tags, field="shared resource tags")
    return parsed, InstanceSetID(id), shared


@dataclasses.dataclass(frozen=True, slots=True)
class SetArguments(Generic[_Model]):
    """What ``Driver.instance_set`` was given, checked
    (:func:`config_driver`): the config parsed with the driver's model, the
    set's id, a copy of the shared resource tags, the logger and the
    optional prometheus registry."""

    config: _Model
    id: InstanceSetID
    tags: SharedResourceTags
    logger: logging.Logger | logging.LoggerAdapter[Any]
    registry: prometheus_client.CollectorRegistry | None


def config_driver(
    model: type[_Model],
    open_set: Callable[[SetArguments[_Model]], Awaitable[InstanceSet]],
    *,
    name: str,
    max_id_chars: int | None = None,
    check_tags: Callable[..., InstanceTags] = validate_tags,
) -> Driver:
    """A :class:`cloudvm.Driver` whose ``instance_set`` checks its arguments
    (:func:`check_set_arguments` with ``model``, ``name``, ``max_id_chars``
    and ``check_tags``) and then returns ``await open_set(arguments)``::

        async def _open(args: SetArguments[MyConfig]) -> MyInstanceSet:
            return MyInstanceSet(args.config, args.id, args.logger)

        DRIVER = config_driver(MyConfig, _open, name="mine")

    So bad input raises (ConfigError, ValueError, TypeError) before
    ``open_set`` runs, and so before any cloud call.
    """

    async def new_set(
        config: Mapping[str, Any] | str | bytes,
        id: InstanceSetID,
        tags: SharedResourceTags,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> InstanceSet:
        parsed, set_id, shared = check_set_arguments(
            model, config, id, tags, driver=name, max_id_chars=max_id_chars, check_tags=check_tags
        )
        return await open_set(SetArguments(parsed, set_id, shared, logger, registry))

    new_set.__qualname__ = getattr(open_set, "__qualname__", new_set.__qualname__)
    return driver_func(new_set)
