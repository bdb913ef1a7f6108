"""Keys derived from the one root secret, each for a single purpose (HKDF-SHA256 with distinct labels)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from retention.errors import KeyProblem

if TYPE_CHECKING:
    from retention.config import Config
    from retention.settings import Environment

TRANSFORM_LABEL = b"retention/v1/hmac-transform"
RECORD_ID_LABEL = b"retention/v1/audit-record-ids"


def derive(root: str, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(root.encode("utf-8"))


MIN_SECRET_BYTES = 32  # of the pseudonym root secret: HMAC keys shorter than the hash are guessable


@dataclass(frozen=True)
class PseudonymKeys:
    """The keys derived from `secrets.pseudonym_key`: the hmac transform's, and the audit record ids' (when hashed)."""

    transform: bytes | None
    record_ids: bytes | None

    def fingerprint(self) -> str:
        """Names the keys without revealing them, so a Dask worker can tell it derived the coordinator's keys."""
        digest = hashlib.sha256(b"retention/v1/key-fingerprint")
        for key in (self.transform, self.record_ids):
            digest.update(hashlib.sha256(key).digest() if key else b"-")
        return digest.hexdigest()[:16]


def pseudonym_keys(config: Config, env: Environment) -> PseudonymKeys:
    """Derive the keys from the root secret this process's environment holds; a short secret is refused."""
    root = env.resolve(config.pseudonym_key) if config.pseudonym_key else None
    if root is not None and len(root.encode("utf-8")) < MIN_SECRET_BYTES:
        raise KeyProblem(f"is {len(root.encode('utf-8'))} bytes; pseudonyms and record ids need a secret of at "
                         f"least {MIN_SECRET_BYTES} bytes: make one with `openssl rand -hex 32`",
                         source=str(config.path), key="secrets.pseudonym_key")
    hashed = root is not None and config.audit is not None and config.audit.record_ids == "hashed"
    return PseudonymKeys(derive(root, TRANSFORM_LABEL) if root else None,
                         derive(root, RECORD_ID_LABEL) if root and hashed else None)
