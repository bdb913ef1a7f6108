"""Keys derived from the one root secret, each for a single purpose (HKDF-SHA256 with distinct labels)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TRANSFORM_LABEL = b"retention/v1/hmac-transform"
RECORD_ID_LABEL = b"retention/v1/audit-record-ids"


def derive(root: str, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(root.encode("utf-8"))
