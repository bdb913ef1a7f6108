"""The signed, hash-chained audit log: writing, signing and verifying it."""

from retention.audit.keys import fingerprint, generate_keypair, load_private_key, load_public_keys
from retention.audit.verify import RunCheck, verify
from retention.audit.writer import AuditWriter, canonical

__all__ = ["AuditWriter", "RunCheck", "canonical", "fingerprint", "generate_keypair", "load_private_key",
           "load_public_keys", "verify"]
