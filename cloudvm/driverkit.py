"""Building blocks for driver authors.

Users of cloudvm need only the names in :mod:`cloudvm`; whoever writes a
driver (ours or a third party's) also gets these: the InstanceSet base class,
the input checks every driver must run before any cloud call, per-instance
secrets, HTTP to the metadata service through the SSH connection, and
optional prometheus metrics; :func:`run_critical` for a section that must
finish (or be rolled back) whatever cancellation arrives, asyncio's own
included; :func:`printable` for text an untrusted host or account chose.
"""

from ._arguments import CreateArguments as CreateArguments
from ._arguments import SetArguments as SetArguments
from ._arguments import check_create_arguments as check_create_arguments
from ._arguments import check_set_arguments as check_set_arguments
from ._arguments import config_driver as config_driver
from ._base import InstanceSetBase as InstanceSetBase
from ._channel_http import ChannelAnswer as ChannelAnswer
from ._channel_http import ChannelHTTP as ChannelHTTP
from ._channel_http import ChannelHTTPError as ChannelHTTPError
from ._channel_http import ChannelHTTPTimeout as ChannelHTTPTimeout
from ._critical import run_critical as run_critical
from ._delegating import DelegatingInstance as DelegatingInstance
from ._drivers import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._executor import split_address as split_address
from ._instance_base import InstanceBase as InstanceBase
from ._instance_base import is_loopback_url as is_loopback_url
from ._log_filters import add_log_filter as add_log_filter
from ._metadata import IMDSV2_SECRET_PATH as IMDSV2_SECRET_PATH
from ._metadata import IMDSV2_TOKEN_TTL as IMDSV2_TOKEN_TTL
from ._metadata import imdsv2_get as imdsv2_get
from ._metadata import imdsv2_token as imdsv2_token
from ._metadata import metadata_get as metadata_get
from ._metadata import verify_with_imdsv2 as verify_with_imdsv2
from ._metrics import CallMetrics as CallMetrics
from ._public_names import publish_names as publish_names
from ._text import printable as printable
from ._tunnel import METADATA_URL as METADATA_URL
from ._tunnel import SSHTunnelTransport as SSHTunnelTransport
from ._tunnel import metadata_client as metadata_client
from ._validate import MAX_INIT_COMMAND_BYTES as MAX_INIT_COMMAND_BYTES
from ._validate import MAX_TAG_KEY_CHARS as MAX_TAG_KEY_CHARS
from ._validate import MAX_TAG_VALUE_CHARS as MAX_TAG_VALUE_CHARS
from ._validate import RESERVED_TAG_PREFIX as RESERVED_TAG_PREFIX
from ._validate import SECRET_TAG as SECRET_TAG
from ._validate import SET_ID_TAG as SET_ID_TAG
from ._validate import check_secret as check_secret
from ._validate import new_secret as new_secret
from ._validate import parse_config as parse_config
from ._validate import validate_init_command as validate_init_command
from ._validate import validate_tags as validate_tags

__all__ = [
    "ENTRY_POINT_GROUP",
    "IMDSV2_SECRET_PATH",
    "IMDSV2_TOKEN_TTL",
    "MAX_INIT_COMMAND_BYTES",
    "MAX_TAG_KEY_CHARS",
    "MAX_TAG_VALUE_CHARS",
    "METADATA_URL",
    "RESERVED_TAG_PREFIX",
    "SECRET_TAG",
    "SET_ID_TAG",
    "CallMetrics",
    "ChannelAnswer",
    "ChannelHTTP",
    "ChannelHTTPError",
    "ChannelHTTPTimeout",
    "CreateArguments",
    "DelegatingInstance",
    "InstanceBase",
    "InstanceSetBase",
    "SSHTunnelTransport",
    "SetArguments",
    "add_log_filter",
    "check_create_arguments",
    "check_secret",
    "check_set_arguments",
    "config_driver",
    "imdsv2_get",
    "imdsv2_token",
    "is_loopback_url",
    "metadata_client",
    "metadata_get",
    "new_secret",
    "parse_config",
    "printable",
    "publish_names",
    "run_critical",
    "split_address",
    "validate_init_command",
    "validate_tags",
    "verify_with_imdsv2",
]

publish_names(globals())
