"""cloudvm's Amazon EC2 driver, on aiobotocore.

``cloudvm.load_driver("ec2")`` returns :data:`DRIVER`; its config is
:class:`EC2Config`. Everything else here is for callers that want the
EC2-specific details: the error tables, the quota-group table and the
InstanceSet and Instance classes (for ``isinstance`` and their extra
properties).
"""

from importlib import metadata as _metadata

from cloudvm.driverkit import publish_names as _publish_names

from ._calls import EC2Client as EC2Client
from ._config import EC2Config as EC2Config
from ._driver import DRIVER as DRIVER
from ._errors import BACKOFF_MAX as BACKOFF_MAX
from ._errors import BACKOFF_MIN as BACKOFF_MIN
from ._errors import QUOTA_CODES as QUOTA_CODES
from ._errors import THROTTLE_CODES as THROTTLE_CODES
from ._errors import EC2APIError as EC2APIError
from ._instance import EC2Instance as EC2Instance
from ._instance_set import EC2InstanceSet as EC2InstanceSet
from ._keys import aws_fingerprints as aws_fingerprints
from ._quota import QUOTA_GROUPS as QUOTA_GROUPS
from ._quota import quota_group as quota_group
from ._user_data import SECRET_USER_DATA_PREFIX as SECRET_USER_DATA_PREFIX

try:
    __version__ = _metadata.version("aiocloudvm-ec2")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "DRIVER",
    "QUOTA_CODES",
    "QUOTA_GROUPS",
    "SECRET_USER_DATA_PREFIX",
    "THROTTLE_CODES",
    "EC2APIError",
    "EC2Client",
    "EC2Config",
    "EC2Instance",
    "EC2InstanceSet",
    "__version__",
    "aws_fingerprints",
    "quota_group",
]

# Reprs and tracebacks should say cloudvm_ec2.EC2APIError, not the private path.
_publish_names(globals())
