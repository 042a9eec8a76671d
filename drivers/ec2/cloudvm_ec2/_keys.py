"""EC2 key pairs: AWS's own fingerprints and the names we import keys under."""

from __future__ import annotations

import base64
import hashlib

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["aws_fingerprints", "key_pair_name", "public_key_material"]


def aws_fingerprints(key: asyncssh.SSHKey) -> list[str]:
    """The fingerprints EC2 shows for ``key`` once imported.

    They are not OpenSSH's: for RSA, EC2 takes the MD5 of the DER
    (SubjectPublicKeyInfo) encoding, as colon-separated hex; for Ed25519, the
    base64 SHA-256 of the SSH public key blob, which some APIs print with the
    trailing ``=`` and some without, so both are returned.

    Raises ValueError for key types EC2 cannot import (ECDSA, DSA, ...).
    """
    algorithm = key.get_algorithm()
    if algorithm == "ssh-rsa":
        pyca = key.convert_to_public().pyca_key
        assert isinstance(pyca, rsa.RSAPublicKey)
        der = pyca.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest = hashlib.md5(der, usedforsecurity=False).hexdigest()
        return [":".join(digest[i : i + 2] for i in range(0, len(digest), 2))]
    if algorithm == "ssh-ed25519":
        encoded = base64.b64encode(hashlib.sha256(key.public_data).digest()).decode("ascii")
        return [encoded, encoded.rstrip("=")]
    raise ValueError(f"EC2 key pairs must be RSA or Ed25519 keys, not {algorithm}")


def key_pair_name(key: asyncssh.SSHKey) -> str:
    """The name we import ``key`` under: derived from the key alone, so that
    every process and every InstanceSet picks the same name for one key."""
    return "cloudvm-" + hashlib.sha256(key.public_data).hexdigest()[:40]


def public_key_material(key: asyncssh.SSHKey) -> bytes:
    """``key`` in the OpenSSH one-line form ImportKeyPair takes, without its
    comment (a comment could carry a user name or host name)."""
    algorithm, blob = key.convert_to_public().export_public_key("openssh").split()[:2]
    return algorithm + b" " + blob
