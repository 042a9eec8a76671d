"""AWS key fingerprints, and keys EC2 cannot take."""

from __future__ import annotations

import hashlib

import asyncssh
import pytest
from cloudvm_ec2 import aws_fingerprints
from cloudvm_ec2._keys import key_pair_name, public_key_material
from moto.ec2.utils import public_key_fingerprint, public_key_parse


def test_rsa_fingerprint_is_md5_of_the_der_public_key() -> None:
    key = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    # moto computes an imported RSA key's fingerprint exactly as EC2 does.
    parsed = public_key_parse(key.export_public_key("openssh"))
    expected = public_key_fingerprint(parsed, lambda data: hashlib.md5(data))
    assert aws_fingerprints(key) == [expected]
    assert aws_fingerprints(key.convert_to_public()) == [expected]
    assert len(expected) == 47 and expected.count(":") == 15


def test_ed25519_fingerprint_is_base64_sha256_with_and_without_padding() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    openssh = key.get_fingerprint("sha256").removeprefix("SHA256:")
    assert aws_fingerprints(key) == [openssh + "=", openssh]


def test_other_key_types_are_refused() -> None:
    key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    with pytest.raises(ValueError, match="RSA or Ed25519"):
        aws_fingerprints(key)


def test_key_pair_name_and_material_come_from_the_key_alone() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519", comment="alice@laptop")
    assert key_pair_name(key) == key_pair_name(key.convert_to_public())
    assert key_pair_name(key).startswith("cloudvm-")
    material = public_key_material(key)
    assert material.startswith(b"ssh-ed25519 ") and b"alice" not in material
