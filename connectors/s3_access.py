"""Reaching S3: the client, calls whose errors are named by code (never by key), listings, one object's state."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from retention.errors import ConnectorError, TargetMissing
from retention.model import OptionValue, Shard

from .s3_records import S3Record, address

IN_FLIGHT = 4  # DeleteObjects calls running at once
LOOKUPS = 16  # concurrent HEAD / GetObjectTagging calls when metadata, tags or locks must be read
SETTLE = timedelta(seconds=2)  # listed this long after its LastModified, a rewrite since would show (plus skew)
LISTED = ("Contents", "Versions", "DeleteMarkers")  # what listing pages list, by key
GONE_CODES = frozenset({"404", "NoSuchKey", "NoSuchVersion", "405", "MethodNotAllowed"})  # (405: a delete marker)


class Missing(enum.Enum):
    """What a read of an object's metadata, tags or lock finds when the object is no longer there."""

    GONE = "gone"  # deleted since it was listed: not counted, not deleted, not reported


class S3Access:
    """A boto3 client (the usual credential chain) and a pool for the per-object lookups."""

    def __init__(self, name: str, options: Mapping[str, OptionValue]) -> None:
        self.name = name
        endpoint, region = options.get("endpoint_url"), options.get("region")
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=str(endpoint) if endpoint else None, region_name=str(region) if region else None,
            config=BotoConfig(max_pool_connections=LOOKUPS + IN_FLIGHT, retries={"max_attempts": 5,
                                                                                  "mode": "standard"}))
        self._pool = ThreadPoolExecutor(max_workers=LOOKUPS, thread_name_prefix=f"s3-{name}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        """One S3 call, its errors named by code (never by key: keys may hold personal data)."""
        try:
            return method(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, method, kwargs) from None

    def _lookup(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        """One call about an object (or version); None when it is gone (deleted since it was listed)."""
        try:
            return method(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "Unknown") in GONE_CODES:
                return None
            raise self._error(exc, method, kwargs) from None
        except BotoCoreError as exc:
            raise self._error(exc, method, kwargs) from None

    @staticmethod
    def _error(exc: ClientError | BotoCoreError, method: Callable[..., Any], kwargs: Mapping[str, Any]
               ) -> ConnectorError:
        if isinstance(exc, BotoCoreError):
            return ConnectorError(f"cannot reach S3: {type(exc).__name__}")
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        if code in ("NoSuchBucket", "404") and "Bucket" in kwargs and "Key" not in kwargs:
            return TargetMissing(f"bucket {kwargs['Bucket']} does not exist")
        return ConnectorError(f"S3 {method.__name__} failed: {code}")

    def _versioned(self, bucket: str) -> bool:
        status = self._call(self.client.get_bucket_versioning, Bucket=bucket).get("Status")
        return status in ("Enabled", "Suspended")

    def _lock_enabled(self, bucket: str) -> bool:
        try:
            configuration = self.client.get_object_lock_configuration(Bucket=bucket)
        except ClientError:
            return False  # ObjectLockConfigurationNotFoundError: the bucket has no Object Lock
        except BotoCoreError as exc:
            raise self._error(exc, self.client.get_object_lock_configuration, {"Bucket": bucket}) from None
        return bool(configuration.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")

    def _lifecycle(self, bucket: str) -> list[Mapping[str, Any]]:
        """The bucket's lifecycle rules as S3 gives them; none when it has no lifecycle configuration."""
        try:
            configuration = self.client.get_bucket_lifecycle_configuration(Bucket=bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            if code == "NoSuchLifecycleConfiguration":
                return []
            raise ConnectorError(f"cannot read the lifecycle configuration of bucket {bucket}: {code}") from None
        except BotoCoreError as exc:
            raise ConnectorError(f"cannot reach S3: {type(exc).__name__}") from None
        rules: list[Mapping[str, Any]] = configuration.get("Rules", [])
        return rules

    def _pages(self, bucket: str, prefix: str, versioned: bool, shard: Shard | None = None
               ) -> Iterator[list[S3Record]]:
        """The bucket's records under `prefix` (and in `shard`), one listing page at a time (memory stays flat)."""
        operation, field, version = ("list_object_versions", "Versions", "VersionId") if versioned else (
            "list_objects_v2", "Contents", None)
        for page in self._listing(operation, bucket, prefix, shard):
            yield _records(page, field, version)

    def _listing(self, operation: str, bucket: str, prefix: str, shard: Shard | None = None, **options: str
                 ) -> Iterator[Mapping[str, Any]]:
        """The raw pages of a listing (of `shard`'s folders and loose keys only, in key order), its errors named:
        a missing bucket, a code, a server gone away."""
        try:
            if shard is None:
                yield from self.client.get_paginator(operation).paginate(Bucket=bucket, Prefix=prefix, **options)
            else:
                yield from self._shard_listing(operation, bucket, prefix, shard)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            if code == "NoSuchBucket":
                raise TargetMissing(f"bucket {bucket} does not exist") from None
            raise ConnectorError(f"S3 listing failed: {code}") from None
        except BotoCoreError as exc:  # the server went away mid-listing (after botocore's retries)
            raise ConnectorError(f"cannot reach S3: {type(exc).__name__}") from None

    def _shard_listing(self, operation: str, bucket: str, prefix: str, shard: Shard) -> Iterator[Mapping[str, Any]]:
        """A shard's folders, each listed by its own prefix; for the shard with the loose keys, the folder listing
        (`Delimiter="/"`) in key order, its keys passed on and its folders of this shard listed where they fall."""
        paginator = self.client.get_paginator(operation)
        if not shard.loose:
            for folder in shard.folders:
                yield from paginator.paginate(Bucket=bucket, Prefix=folder)
            return
        mine = set(shard.folders)
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            rest = {name: value for name, value in page.items() if name not in LISTED and name != "CommonPrefixes"}
            entries = sorted([(item["Key"], name, item) for name in LISTED for item in page.get(name, [])]
                             + [(folder["Prefix"], "", {}) for folder in page.get("CommonPrefixes", [])],
                             key=lambda entry: entry[0])
            loose: dict[str, list[Any]] = {}
            for key, name, item in entries:
                if name:
                    loose.setdefault(name, []).append(item)
                elif key in mine:
                    if loose:
                        yield {**rest, **loose}
                        loose = {}
                    yield from paginator.paginate(Bucket=bucket, Prefix=key)
            if loose:
                yield {**rest, **loose}

    def _listing_page(self, bucket: str, prefix: str, start_after: str | None) -> tuple[list[S3Record], bool]:
        """One fresh page of the unversioned listing after `start_after`, and whether more follow."""
        page = self._call(self.client.list_objects_v2, Bucket=bucket, Prefix=prefix,
                          **({"StartAfter": start_after} if start_after else {}))
        return _records(page, "Contents", None), bool(page.get("IsTruncated"))

    def _head_record(self, bucket: str, record: S3Record) -> S3Record | None:
        """The version as it is now (a `null` version may have been replaced); None when it is gone."""
        head = self._lookup(self.client.head_object, **address(bucket, record))
        if head is None:
            return None
        return S3Record(record.key, record.version_id, head["LastModified"].astimezone(UTC), head.get("ETag"))


def _records(page: Mapping[str, Any], field: str, version: str | None) -> list[S3Record]:
    """A listing page's records; those listed at least SETTLE after their last write are settled."""
    served = _served_at(page)
    # in the one shared UTC: botocore gives each time a tzlocal() of its own (400 bytes a record) where TZ is UTC
    return [S3Record(item["Key"], item[version] if version else None, item["LastModified"].astimezone(UTC),
                     item.get("ETag"), served is not None and item["LastModified"] <= served - SETTLE)
            for item in page.get(field, [])]


def _served_at(response: Mapping[str, Any]) -> datetime | None:
    """When the server sent a response (its Date header); None when it did not say."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        return None
