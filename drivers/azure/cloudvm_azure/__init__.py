"""The Azure driver for cloudvm, on azure-mgmt-compute and azure-mgmt-network (aio).

``cloudvm.load_driver("azure")`` returns :data:`DRIVER`; its config is
:class:`AzureConfig`. :func:`open_instance_set` does what
``DRIVER.instance_set`` does and also takes a credential object.
"""

import contextlib

from ._config import AzureConfig as AzureConfig
from ._driver import DRIVER as DRIVER
from ._driver import open_instance_set as open_instance_set
from ._instance import AzureInstance as AzureInstance
from ._instance_set import AzureInstanceSet as AzureInstanceSet
from ._tags import CREATED_AT_TAG as CREATED_AT_TAG

__all__ = [
    "CREATED_AT_TAG",
    "DRIVER",
    "AzureConfig",
    "AzureInstance",
    "AzureInstanceSet",
    "open_instance_set",
]

for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) or callable(_value):
        with contextlib.suppress(AttributeError, TypeError):  # builtins refuse
            _value.__module__ = __name__
