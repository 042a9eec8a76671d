"""The ``ec2`` driver's config."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

import pydantic

from cloudvm.driverkit import is_loopback_url

__all__ = ["EC2Config", "IDList"]

_SUBNET_ID = re.compile(r"^subnet-[0-9a-zA-Z]+$")
_GROUP_ID = re.compile(r"^sg-[0-9a-zA-Z]+$")


def _one_or_many(value: object) -> object:
    # An operator with one subnet may write a string; Arvados accepts both
    # forms too (sliceOrSingleString).
    return [value] if isinstance(value, str) else value


#: A list of ids that also accepts a single string (one id) in config files.
IDList = Annotated[list[str], pydantic.BeforeValidator(_one_or_many)]


class EC2Config(pydantic.BaseModel):
    """Config of the ``ec2`` driver. Unknown keys are refused.

    ================================ ==========================================
    Key                              Meaning
    ================================ ==========================================
    ``region``                       the AWS region (required)
    ``endpoint_url``                 another EC2 endpoint: moto, LocalStack, a
                                     VPC endpoint (default: AWS's own). Plain
                                     ``http://`` only to a loopback address
                                     (127.0.0.0/8, ::1, ``localhost``) unless
                                     ``allow_insecure_transport`` is true
    ``allow_insecure_transport``     ``true`` lets ``endpoint_url`` use plain
                                     http to any host: signed requests,
                                     session tokens and instance secrets then
                                     cross the network unencrypted
    ``access_key_id``,               static credentials; both or neither.
    ``secret_access_key``,           Without them the standard AWS chain is
    ``session_token``                used (environment, profile, instance role)
    ``profile``                      a named profile of the shared AWS config
    ``subnet_ids``                   subnets to launch in (a list, or one id);
                                     ``create`` fails over between them; empty
                                     means the default VPC's default subnet
    ``security_group_ids``           security groups of the instance's NIC
    ``admin_username``               the user the image authorises the key
                                     pair for (``ec2-user``, ``admin``,
                                     ``ubuntu``...), our ``remote_user``
    ``ebs_volume_type``              type of the added scratch volume
    ``ebs_price``                    its price per GiB-month, added to
                                     ``price_history``
    ``scratch_device_name``          device name of the added scratch volume
    ``iam_instance_profile``         a profile name or ARN to attach
    ``spot_price_update_interval``   seconds between spot price refreshes
    ``address``                      ``"private"`` (default) or ``"public"``:
                                     which IP is the instance's address. Public
                                     also asks EC2 for a public IP at launch
    ``secret_storage``               where the host-proving secret is read
                                     from: ``"tag"`` (instance tags in IMDS) or
                                     ``"user-data"`` (for accounts or tags that
                                     cannot use tags in IMDS)
    ``quota_groups``                 extra or replaced entries of the
                                     type-prefix -> quota group table
    ``page_size``                    DescribeInstances page size (5-1000)
    ``connect_timeout``,             seconds, per API call
    ``read_timeout``
    ``lost_response_retries``        how often ``create`` repeats a RunInstances
                                     whose response was lost (same ClientToken,
                                     so never a second instance)
    ``metadata_timeout``             seconds per metadata request during
                                     ``verify_host_key``
    ``set_tags_timeout``             seconds ``set_tags`` keeps repeating its
                                     second call (throttled, or no answer)
                                     before putting the old tags back (and as
                                     long again for that)
    ================================ ==========================================
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    region: str = pydantic.Field(min_length=1)
    # Declared before endpoint_url, whose check reads it.
    allow_insecure_transport: pydantic.StrictBool = False
    endpoint_url: pydantic.AnyHttpUrl | None = None
    access_key_id: str | None = pydantic.Field(default=None, min_length=1)
    secret_access_key: pydantic.SecretStr | None = None
    session_token: pydantic.SecretStr | None = None
    profile: str | None = pydantic.Field(default=None, min_length=1)
    subnet_ids: IDList = pydantic.Field(default_factory=list)
    security_group_ids: IDList = pydantic.Field(default_factory=list)
    admin_username: str = pydantic.Field(min_length=1)
    ebs_volume_type: Literal["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"] = "gp3"
    ebs_price: float = pydantic.Field(default=0.0, ge=0.0)
    scratch_device_name: str = pydantic.Field(default="/dev/xvdt", pattern=r"^/dev/[a-z0-9]+$")
    iam_instance_profile: str | None = pydantic.Field(default=None, min_length=1)
    spot_price_update_interval: float = pydantic.Field(default=86400.0, gt=0.0)
    address: Literal["private", "public"] = "private"
    secret_storage: Literal["tag", "user-data"] = "tag"
    quota_groups: dict[str, str] = pydantic.Field(default_factory=dict)
    page_size: int = pydantic.Field(default=1000, ge=5, le=1000)
    connect_timeout: float = pydantic.Field(default=10.0, gt=0.0)
    read_timeout: float = pydantic.Field(default=60.0, gt=0.0)
    lost_response_retries: int = pydantic.Field(default=2, ge=0, le=10)
    metadata_timeout: float = pydantic.Field(default=10.0, gt=0.0)
    set_tags_timeout: float = pydantic.Field(default=30.0, gt=0.0)

    @pydantic.field_validator("endpoint_url")
    @classmethod
    def _check_transport(
        cls, value: pydantic.AnyHttpUrl | None, info: pydantic.ValidationInfo
    ) -> pydantic.AnyHttpUrl | None:
        if value is None or value.scheme != "http" or is_loopback_url(value.host or ""):
            return value
        if info.data.get("allow_insecure_transport"):
            return value
        # The URL itself is not repeated: it may carry user:password.
        raise ValueError(
            "plain http is accepted only to a loopback address (127.0.0.0/8, ::1, "
            "localhost); use https, or set allow_insecure_transport: true to send "
            "signed requests and instance secrets unencrypted"
        )

    @pydantic.field_validator("subnet_ids")
    @classmethod
    def _check_subnets(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _SUBNET_ID.match(item):
                raise ValueError(f"{item!r} is not a subnet id (subnet-...)")
        if len(set(value)) != len(value):
            raise ValueError("subnet ids must not repeat")
        return value

    @pydantic.field_validator("security_group_ids")
    @classmethod
    def _check_groups(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _GROUP_ID.match(item):
                raise ValueError(f"{item!r} is not a security group id (sg-...)")
        return value

    @pydantic.field_validator("quota_groups")
    @classmethod
    def _check_quota_groups(cls, value: dict[str, str]) -> dict[str, str]:
        for prefix, group in value.items():
            if not re.fullmatch(r"[a-z]+[0-9]*", prefix):
                raise ValueError(
                    f"quota group key {prefix!r} must be an instance family prefix "
                    "(lower-case letters, optionally a generation: 'p', 'p5')"
                )
            if not group:
                raise ValueError(f"quota group for {prefix!r} must not be empty")
        return value

    @pydantic.model_validator(mode="after")
    def _check_credentials(self) -> Self:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError(
                "access_key_id and secret_access_key go together: give both or neither"
            )
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        if self.profile is not None and self.access_key_id is not None:
            raise ValueError("give either static credentials or a profile, not both")
        return self
