"""The WORM copy of the audit log: each signed run file also written to an S3 bucket under Object Lock.

COMPLIANCE mode means nobody, root account included, can delete or overwrite a copy before its retention
ends. The bucket is also where a run in a fresh container finds the chain head, and the only place that can
reveal that the newest local runs were deleted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from retention.audit.events import RUN_FILE
from retention.audit.writer import ChainHead
from retention.connector import ObjectClient
from retention.errors import AuditError


class WormCopy:
    def __init__(self, client: ObjectClient, bucket: str, prefix: str, retain_days: int) -> None:
        self.client, self.bucket, self.prefix, self.retain_days = client, bucket, prefix, retain_days

    def _names(self) -> set[str]:
        names: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            names.update(item["Key"][len(self.prefix):] for item in page.get("Contents", []))
        return names

    def head(self) -> ChainHead | None:
        """The newest run in the bucket, read from the bucket itself."""
        try:
            names = self._names()
            runs = sorted(name for name in names if RUN_FILE.match(name))
            if not runs:
                return None
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + runs[-1])["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise AuditError(f"cannot read the WORM copy in bucket {self.bucket}: {_code(exc)}") from None
        return ChainHead(runs[-1], hashlib.sha256(body).hexdigest(), runs[-1] + ".sig" in names)

    def upload(self, paths: Sequence[Path], now: datetime) -> None:
        """Write these files under COMPLIANCE-mode Object Lock until `now` + retain_days."""
        until = now.astimezone(UTC) + timedelta(days=self.retain_days)
        for path in paths:
            try:
                self.client.put_object(Bucket=self.bucket, Key=self.prefix + path.name, Body=path.read_bytes(),
                                       ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until,
                                       ChecksumAlgorithm="SHA256")
            except (ClientError, BotoCoreError) as exc:
                raise AuditError(f"WORM upload of {path.name} to bucket {self.bucket} failed: {_code(exc)}; "
                                 "the local file is kept") from None

    def missing(self, local: Sequence[Path]) -> list[Path]:
        """Local signed run files (and companions) that the bucket does not hold yet."""
        try:
            names = self._names()
        except (ClientError, BotoCoreError) as exc:
            raise AuditError(f"cannot list the WORM copy in bucket {self.bucket}: {_code(exc)}") from None
        return [path for path in local if path.name not in names]


def _code(error: Exception) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "Unknown"))
    return type(error).__name__
