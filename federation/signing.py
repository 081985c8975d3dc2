"""Ed25519 signing keys (from `cryptography`): the query service signs every task it sends and every
audit entry it writes; nodes and auditors verify with its public key, which they pin out of band."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.exceptions import ConfigurationError
from federation.secretfile import read_private


class Signer:
    """A private signing key; never logged, never sent."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._key.sign(data)).decode()

    @property
    def public(self) -> Verifier:
        return Verifier(self._key.public_key())


class Verifier:
    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    def verify(self, data: bytes, signature: str) -> bool:
        try:
            self._key.verify(base64.b64decode(signature, validate=True), data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def pem(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def from_file(cls, path: Path) -> Verifier:
        if not path.exists():
            raise ConfigurationError(f"public key {path} does not exist; copy the service's service.pub here")
        key = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigurationError(f"{path} is not an Ed25519 public key")
        return cls(key)


def load_or_create_signer(path: Path) -> Signer:
    """The service key at `path` (PEM, mode 0600), created on first start; its public key next to it (.pub)."""
    if path.exists():
        key = serialization.load_pem_private_key(read_private(path, "signing key"), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"{path} is not an Ed25519 private key")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    signer = Signer(key)
    path.with_suffix(".pub").write_bytes(signer.public.pem())
    return signer
