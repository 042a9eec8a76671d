"""The loopback cloud: every instance is a local process running an SSH server.

``cloudvm.load_driver("loopback")`` returns :data:`DRIVER`. See
:class:`LoopbackConfig` for its config keys.
"""

from ._config import LoopbackConfig as LoopbackConfig
from ._driver import DRIVER as DRIVER

__all__ = ["DRIVER", "LoopbackConfig"]
