"""A package's public names, shown under the package rather than the
private module that defines them."""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping

__all__ = ["publish_names"]


def publish_names(namespace: MutableMapping[str, object]) -> None:
    """Make each class and function named in ``namespace["__all__"]`` say it
    belongs to ``namespace["__name__"]``, so that reprs, tracebacks and docs
    show ``cloudvm_ec2.EC2APIError``, not ``cloudvm_ec2._errors.EC2APIError``.
    Call it last in a package's ``__init__``: ``publish_names(globals())``.
    Objects that refuse a new ``__module__`` (builtins) are left as they are."""
    package = namespace["__name__"]
    names = namespace["__all__"]
    assert isinstance(package, str) and isinstance(names, (list, tuple))
    for name in names:
        value = namespace[name]
        if isinstance(value, type) or callable(value):
            with contextlib.suppress(AttributeError, TypeError):  # builtins refuse
                value.__module__ = package
