"""A synthetic S3 endpoint for the memory benchmark: one virtual bucket of N objects, computed, never stored.

It stands in for S3 only so that the peak RSS of `retention run` can be measured on a prefix of 1,000,000 objects
(writing that many into moto or SeaweedFS takes hours on a small machine). Timings against it mean nothing: it is
a Python server sharing the cores with the tool, and it answers far faster or slower than S3 would.

Object i of the bucket is `{prefix}{i:08d}.json`; its LastModified, ETag and size are computed from i (even indices
are `old` before the server started, odd ones `new`). Deleted objects are marked in a bitmap, so they vanish from
later listings and the count of deleted objects can be asked for. Path-style addressing, HTTP/1.1 keep-alive.

It answers exactly what the S3 connector calls during `retention run` on an unversioned bucket without Object
Lock: HeadBucket, GetBucketVersioning (never enabled), GetObjectLockConfiguration (404
ObjectLockConfigurationNotFoundError, as AWS answers), ListObjectsV2 (prefix, continuation-token, start-after,
max-keys, encoding-type), DeleteObjects and HeadObject. Any other request is answered 501 and printed to stderr,
so a gap shows instead of going silently wrong.
"""

from __future__ import annotations

import argparse
import bisect
import sys
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote_plus, unquote, urlsplit
from xml.sax.saxutils import escape

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEYS = 1000
QUOTE = '"'
LIST_PARAMETERS = frozenset({"list-type", "prefix", "continuation-token", "start-after", "max-keys", "encoding-type"})


class VirtualBucket:
    """N objects named and dated by their index; only the deletions are stored (one byte each)."""

    def __init__(self, name: str, prefix: str, count: int, *, old: timedelta, new: timedelta) -> None:
        self.name, self.prefix, self.count = name, prefix, count
        started = datetime.now(UTC).replace(microsecond=0)
        self._dated = (started - old, started - new)  # even indices, odd indices
        self._gone = bytearray(count)
        self._lock = threading.Lock()
        self.deleted = 0

    def key(self, i: int) -> str:
        return f"{self.prefix}{i:08d}.json"

    def last_modified(self, i: int) -> datetime:
        return self._dated[i % 2] - timedelta(seconds=i % 3600)

    @staticmethod
    def etag(i: int) -> str:
        return f'"{i:032x}"'

    @staticmethod
    def size(i: int) -> int:
        return 1024 + i % 1024

    def index(self, key: str) -> int | None:
        """The live object named `key`, if any."""
        digits = key.removeprefix(self.prefix).removesuffix(".json")
        if not digits.isdigit() or int(digits) >= self.count:
            return None
        i = int(digits)
        return i if self.key(i) == key and not self._gone[i] else None

    def gone(self) -> bytes:
        """One byte per index: 1 where the object was deleted."""
        return bytes(self._gone)

    def delete(self, key: str) -> None:
        """Remove the object if it is there; deleting a missing key is no error (as on S3)."""
        with self._lock:
            i = self.index(key)
            if i is not None:
                self._gone[i] = 1
                self.deleted += 1

    def listing(self, prefix: str, start: int, after: str | None, max_keys: int) -> tuple[list[int], int | None]:
        """Live indices whose keys start with `prefix`, from index `start` and after the key `after`, in key order;
        and where the next page starts (None: nothing follows)."""
        keys = range(self.count)
        i = max(start, bisect.bisect_left(keys, prefix, key=self.key))
        if after is not None:
            i = max(i, bisect.bisect_right(keys, after, key=self.key))
        found: list[int] = []
        while i < self.count and self.key(i).startswith(prefix):  # keys under a prefix are contiguous in order
            if not self._gone[i]:
                if len(found) == max_keys:
                    return found, i
                found.append(i)
            i += 1
        return found, None


class Handler(BaseHTTPRequestHandler):
    """Routes each request by method, path (bucket or object) and query to the bucket's answer."""

    protocol_version = "HTTP/1.1"
    server: SyntheticS3

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def do_DELETE(self) -> None:
        self._route()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the benchmark's output; refusals are printed by _refuse

    def _route(self) -> None:
        body = self._body()
        url = urlsplit(self.path)
        bucket_name, _, key = unquote(url.path).lstrip("/").partition("/")
        query = {name: values[-1] for name, values in parse_qs(url.query, keep_blank_values=True).items()}
        names = set(query)
        if body is None:
            return self._refuse("a chunked body")
        bucket = self.server.bucket
        if bucket_name and bucket_name != bucket.name:
            return self._error(404, "NoSuchBucket", "The specified bucket does not exist")
        if not key and bucket_name:
            if self.command == "HEAD" and not names:
                return self._served("HeadBucket", self._reply, 200, b"", {"x-amz-bucket-region": "us-east-1"})
            if self.command == "GET" and names == {"versioning"}:
                return self._served("GetBucketVersioning", self._xml, f'<VersioningConfiguration xmlns="{NAMESPACE}"/>')
            if self.command == "GET" and names == {"object-lock"}:
                return self._served("GetObjectLockConfiguration", self._error, 404,
                                    "ObjectLockConfigurationNotFoundError",
                                    "Object Lock configuration does not exist for this bucket")
            if self.command == "GET" and query.get("list-type") == "2" and names <= LIST_PARAMETERS:
                return self._served("ListObjectsV2", self._list_objects_v2, query)
            if self.command == "POST" and names == {"delete"}:
                return self._served("DeleteObjects", self._delete_objects, body)
        elif key and self.command == "HEAD" and not names:
            return self._served("HeadObject", self._head_object, key)
        return self._refuse("an operation this endpoint does not serve")

    def _served(self, operation: str, answer: Callable[..., None], *arguments: Any) -> None:
        with self.server.lock:
            self.server.calls[operation] += 1
        answer(*arguments)

    def _body(self) -> bytes | None:
        """The request body, read whole (None: chunked, which no call served here sends)."""
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            self.close_connection = True
            return None
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _list_objects_v2(self, query: dict[str, str]) -> None:
        bucket = self.server.bucket
        prefix, token, after = query.get("prefix", ""), query.get("continuation-token"), query.get("start-after")
        max_keys = min(int(query.get("max-keys", MAX_KEYS)), MAX_KEYS)
        if token is not None and not token.isdigit():
            self._error(400, "InvalidArgument", "The continuation token provided is incorrect")
            return
        found, following = bucket.listing(prefix, int(token or 0), after, max_keys)
        encoded = query.get("encoding-type") == "url"

        def text(value: str) -> str:
            return escape(quote_plus(value, safe="/") if encoded else value)

        contents = "".join(
            f"<Contents><Key>{text(bucket.key(i))}</Key>"
            f"<LastModified>{bucket.last_modified(i).strftime('%Y-%m-%dT%H:%M:%S.000Z')}</LastModified>"
            f"<ETag>{bucket.etag(i).replace(QUOTE, '&quot;')}</ETag><Size>{bucket.size(i)}</Size>"
            f"<StorageClass>STANDARD</StorageClass></Contents>" for i in found)
        self._xml(
            f'<ListBucketResult xmlns="{NAMESPACE}"><Name>{escape(bucket.name)}</Name>'
            f"<Prefix>{text(prefix)}</Prefix><KeyCount>{len(found)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"
            + ("<EncodingType>url</EncodingType>" if encoded else "")
            + f"<IsTruncated>{'true' if following is not None else 'false'}</IsTruncated>"
            + (f"<ContinuationToken>{token}</ContinuationToken>" if token is not None else "")
            + (f"<NextContinuationToken>{following}</NextContinuationToken>" if following is not None else "")
            + (f"<StartAfter>{text(after)}</StartAfter>" if after is not None else "")
            + contents + "</ListBucketResult>")

    def _delete_objects(self, body: bytes) -> None:
        try:
            request = ET.fromstring(body)  # noqa: S314 (a benchmark's own client on 127.0.0.1)
        except ET.ParseError:
            self._error(400, "MalformedXML", "The XML you provided was not well-formed")
            return
        fields = {element.tag.rpartition("}")[2]: element for element in request}
        quiet = fields.get("Quiet") is not None and (fields["Quiet"].text or "").strip().lower() == "true"
        keys: list[str] = []
        for element in request:
            if element.tag.rpartition("}")[2] != "Object":
                continue
            parts = {part.tag.rpartition("}")[2]: part.text or "" for part in element}
            if set(parts) != {"Key"}:  # a VersionId or an ETag condition: not what an unversioned run sends
                self._refuse(f"DeleteObjects with {sorted(set(parts) - {'Key'})}")
                return
            keys.append(parts["Key"])
        if not 1 <= len(keys) <= MAX_KEYS:
            self._error(400, "MalformedXML", "DeleteObjects takes 1 to 1,000 keys")
            return
        for key in keys:
            self.server.bucket.delete(key)
        deleted = "" if quiet else "".join(f"<Deleted><Key>{escape(key)}</Key></Deleted>" for key in keys)
        self._xml(f'<DeleteResult xmlns="{NAMESPACE}">{deleted}</DeleteResult>')

    def _head_object(self, key: str) -> None:
        bucket = self.server.bucket
        i = bucket.index(key)
        if i is None:
            self._reply(404, b"")
            return
        self._reply(200, b"", {"Last-Modified": format_datetime(bucket.last_modified(i), usegmt=True),
                               "ETag": bucket.etag(i), "Content-Type": "application/json"}, length=bucket.size(i))

    def _xml(self, document: str) -> None:
        self._reply(200, b'<?xml version="1.0" encoding="UTF-8"?>\n' + document.encode("utf-8"),
                    {"Content-Type": "application/xml"})

    def _error(self, status: int, code: str, message: str) -> None:
        body = b"" if self.command == "HEAD" else (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>synthetic</RequestId></Error>").encode()
        self._reply(status, body, {"Content-Type": "application/xml"})

    def _refuse(self, what: str) -> None:
        print(f"s3_synthetic: 501 for {what}: {self.command} {self.path}", file=sys.stderr, flush=True)
        self._error(501, "NotImplemented", f"the synthetic S3 endpoint does not serve {what}")

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None, *,
               length: int | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("x-amz-request-id", "synthetic")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class SyntheticS3(ThreadingHTTPServer):
    """A thread per connection (boto3 keeps up to 20 open), one bucket, and a tally of the calls answered."""

    def __init__(self, address: tuple[str, int], bucket: VirtualBucket) -> None:
        super().__init__(address, Handler)
        self.bucket = bucket
        self.calls: Counter[str] = Counter()  # requests answered, by operation
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]!s}:{self.server_address[1]}"


@contextmanager
def serving(bucket: VirtualBucket, host: str = "127.0.0.1", port: int = 0) -> Iterator[SyntheticS3]:
    """Serve `bucket` on a thread of this process until the block ends; its `url` is the endpoint."""
    server = SyntheticS3((host, port), bucket)
    thread = threading.Thread(target=server.serve_forever, name="s3-synthetic", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--bucket", default="synthetic")
    parser.add_argument("--prefix", default="events/")
    parser.add_argument("--port", type=int, default=8333)
    arguments = parser.parse_args()
    bucket = VirtualBucket(arguments.bucket, arguments.prefix, arguments.objects, old=timedelta(days=3 * 365),
                           new=timedelta(days=1))
    with serving(bucket, port=arguments.port) as server:
        print(f"{server.url}/{bucket.name}: {bucket.count:,} objects under {bucket.prefix!r}; Ctrl-C stops", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print(f"{bucket.deleted:,} deleted; requests: {dict(server.calls)}", flush=True)


if __name__ == "__main__":
    main()
