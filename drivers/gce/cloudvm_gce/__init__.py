"""The Google Compute Engine driver for cloudvm.

``cloudvm.load_driver("gce")`` returns :data:`DRIVER`; its config is
:class:`GCEConfig`. See the distribution's README for the behaviour.
"""

from ._config import GCEConfig as GCEConfig
from ._driver import DRIVER as DRIVER

__all__ = ["DRIVER", "GCEConfig"]

GCEConfig.__module__ = __name__
