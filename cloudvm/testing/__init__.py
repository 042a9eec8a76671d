"""Test doubles and servers for users of cloudvm and for driver authors.

:class:`SSHTestServer` is a real in-process SSH server that records commands
and serves a metadata service through its own connections;
:class:`IMDSv2Service` is EC2's metadata protocol as an HTTP handler for it.
"""

import contextlib

from .._http_server import HTTPHandler as HTTPHandler
from .._http_server import HTTPRequest as HTTPRequest
from .._http_server import HTTPResponse as HTTPResponse
from .._imds import IMDSv2Service as IMDSv2Service
from ._ssh_server import SSHTestServer as SSHTestServer

__all__ = ["HTTPHandler", "HTTPRequest", "HTTPResponse", "IMDSv2Service", "SSHTestServer"]

for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type):
        with contextlib.suppress(AttributeError, TypeError):  # builtins refuse
            _value.__module__ = __name__
