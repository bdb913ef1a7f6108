"""Keys derived from the one root secret, each for a single purpose (HKDF-SHA256 with distinct labels)."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TRANSFORM_LABEL = b"retention/v1/hmac-transform"
RECORD_ID_LABEL = b"retention/v1/audit-record-ids"


def derive(root: str, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(root.encode("utf-8"))


class RecordIdHasher:
    """Keyed hashes of record keys for the audit sidecar: linkable by whoever holds the key, opaque otherwise."""

    def __init__(self, root: str) -> None:
        self._key = derive(root, RECORD_ID_LABEL)

    def __call__(self, record_key: str) -> str:
        return hmac.new(self._key, record_key.encode("utf-8"), hashlib.sha256).hexdigest()
