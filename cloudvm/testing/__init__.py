"""Test doubles and servers for users of cloudvm and for driver authors.

:class:`SSHTestServer` is a real in-process SSH server that records commands
and serves a metadata service through its own connections;
:class:`IMDSv2Service` is EC2's metadata protocol as an HTTP handler for it.
:class:`RedirectedTarget` is an instance's identity reached at another address
(such a server's). :class:`HostedDriver` wraps a driver tested against a local
stand-in for its cloud so that each instance it creates runs on such a server
(its cloud-specific part, a :class:`HostBoot`, comes from a callback).

:func:`cancel_at_each_suspension` cancels an operation at each of its
suspension points in turn, by ``Task.cancel()`` or by an anyio scope, so a
test can check that no cancellation leaves anything behind.

:func:`capture_every_log` collects every log record of the process at DEBUG,
for tests that check no secret is ever logged.

:func:`load_sample_config` and :func:`undocumented_keys` check a driver's
sample config file (valid, every key documented); :func:`run_example` runs an
example program (imported by :func:`import_program`) on a HostedDriver's
hosts with such a config pointed at a local stand-in for the cloud.

:class:`FakeCloud` is an in-memory, fault-injecting cloud (rate limits, quotas,
capacity shortages, lost responses, eventual consistency, failure rates,
latency, optional SSH), reached through the ``fake`` driver
(:data:`FAKE_DRIVER`, ``cloudvm.load_driver("fake")``) and configured with
:class:`FakeConfig`.
"""

import contextlib

from .._http_server import HTTPHandler as HTTPHandler
from .._http_server import HTTPRequest as HTTPRequest
from .._http_server import HTTPResponse as HTTPResponse
from .._imds import IMDSv2Service as IMDSv2Service
from ._cancellation import CancelBy as CancelBy
from ._cancellation import cancel_at_each_suspension as cancel_at_each_suspension
from ._fake import DRIVER as FAKE_DRIVER
from ._fake import FakeInstance as FakeInstance
from ._fake import FakeInstanceSet as FakeInstanceSet
from ._fake_clock import FakeClock as FakeClock
from ._fake_clock import ManualClock as ManualClock
from ._fake_clock import SystemClock as SystemClock
from ._fake_cloud import CallRecord as CallRecord
from ._fake_cloud import FakeCloud as FakeCloud
from ._fake_cloud import InjectedError as InjectedError
from ._fake_cloud import LostResponseError as LostResponseError
from ._fake_cloud import Misuse as Misuse
from ._fake_cloud import close_named_clouds as close_named_clouds
from ._fake_config import CapacityShortage as CapacityShortage
from ._fake_config import FakeConfig as FakeConfig
from ._fake_config import OperationDelays as OperationDelays
from ._fake_config import OperationRates as OperationRates
from ._fake_config import QuotaLimit as QuotaLimit
from ._fake_config import RateLimits as RateLimits
from ._fake_config import TokenBucket as TokenBucket
from ._hosted import HostBoot as HostBoot
from ._hosted import HostedDriver as HostedDriver
from ._hosted import HostedInstance as HostedInstance
from ._logs import LogCapture as LogCapture
from ._logs import capture_every_log as capture_every_log
from ._samples import import_program as import_program
from ._samples import load_sample_config as load_sample_config
from ._samples import run_example as run_example
from ._samples import undocumented_keys as undocumented_keys
from ._ssh_server import SSHTestServer as SSHTestServer
from ._targets import RedirectedTarget as RedirectedTarget

__all__ = [
    "FAKE_DRIVER",
    "CallRecord",
    "CancelBy",
    "CapacityShortage",
    "FakeClock",
    "FakeCloud",
    "FakeConfig",
    "FakeInstance",
    "FakeInstanceSet",
    "HTTPHandler",
    "HTTPRequest",
    "HTTPResponse",
    "HostBoot",
    "HostedDriver",
    "HostedInstance",
    "IMDSv2Service",
    "InjectedError",
    "LogCapture",
    "LostResponseError",
    "ManualClock",
    "Misuse",
    "OperationDelays",
    "OperationRates",
    "QuotaLimit",
    "RateLimits",
    "RedirectedTarget",
    "SSHTestServer",
    "SystemClock",
    "TokenBucket",
    "cancel_at_each_suspension",
    "capture_every_log",
    "close_named_clouds",
    "import_program",
    "load_sample_config",
    "run_example",
    "undocumented_keys",
]

for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type):
        with contextlib.suppress(AttributeError, TypeError):  # builtins refuse
            _value.__module__ = __name__
