"""Ed25519 keys for signing audit logs, in PEM files that openssl reads as they are."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from retention.errors import KeyProblem


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new key pair (private PKCS#8 PEM, mode 0600; public SPKI PEM) and return its fingerprint."""
    for path in (private_path, public_path):
        if path.exists():
            raise KeyProblem(f"{path} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return fingerprint(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at `path`, refused when others can read it or it is not Ed25519."""
    try:
        mode = path.stat().st_mode
        head = path.read_bytes()[:100]
    except OSError as exc:
        raise KeyProblem(f"cannot read the signing key {path}: {exc.strerror}") from None
    if b"PUBLIC KEY" in head:
        raise KeyProblem(f"{path} is a public key; signing needs the private half (`retention audit keygen` "
                         "writes both: the private key for [audit] signing_key, the public key for verifiers)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyProblem(f"signing key {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}); "
                         f"run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyProblem(f"{path} is not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyProblem(f"{path} is not an Ed25519 key (create one with `retention audit keygen`)")
    return key


def load_public_keys(paths: list[Path]) -> list[Ed25519PublicKey]:
    keys = []
    for path in paths:
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except OSError as exc:
            raise KeyProblem(f"cannot read public key {path}: {exc.strerror}") from None
        except (ValueError, UnsupportedAlgorithm):
            raise KeyProblem(f"{path} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyProblem(f"{path} is not an Ed25519 public key")
        keys.append(key)
    return keys


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the DER public key: `openssl pkey -pubin -in PUB.pem -outform DER | sha256sum`."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()
