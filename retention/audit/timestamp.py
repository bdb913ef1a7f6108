"""Trusted timestamps (RFC 3161): a token from a time-stamping authority (TSA) that a run's log existed, byte for
byte, at a time the TSA vouches for.

The Ed25519 signature says who wrote a log; it cannot say when, since whoever holds the key can sign a backdated
file. The token can: the TSA signs the SHA-256 of the file together with its own clock. `<name>.jsonl.tsr` is the
DER `TimeStampResp` exactly as the TSA sent it (the TSA's certificate included), so plain
`openssl ts -verify -data <name>.jsonl -in <name>.jsonl.tsr -CAfile tsa-ca.pem` checks it without this project.

A TSA that cannot be reached never costs a run: the token is fetched by a later run (`backfill`), and until then
`audit verify` shows the gap.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import structlog
from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimeStampRequest,
    TimestampRequestBuilder,
    TimeStampResponse,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from retention.audit.events import RunFiles
from retention.audit.writer import run_files
from retention.timeutil import rfc3339

TIMEOUT_SECONDS = 10  # per request: a TSA that hangs must not hold the run's lock for long
BACKLOG = 50  # earlier runs one run fetches missing tokens for, oldest first: a long outage drains over a few runs
MAX_REPLY = 1 << 20  # a TimeStampResp is a few KiB; more is not a reply
QUERY, REPLY = "application/timestamp-query", "application/timestamp-reply"
SHA256 = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1")

log = structlog.get_logger("retention")


class TimestampError(Exception):
    """No token: why, in words fit for a log line (no URL, no credentials, no data)."""


@dataclass(frozen=True)
class Authority:
    """A TSA: where to ask (the URL may carry credentials, so it is never shown) and the CA that vouches for it."""

    url: str = field(repr=False)
    roots: tuple[x509.Certificate, ...]

    @property
    def where(self) -> str:
        """scheme://host[:port]: enough for an operator to know which TSA, without credentials, path or query."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


@dataclass(frozen=True)
class TimestampPolicy:
    """What `audit verify` expects of tokens: whether every signed run should have one, and the CA to check them."""

    expected: bool = False  # a TSA is configured (or --tsa-ca given): a signed run without a token is a gap
    roots: tuple[x509.Certificate, ...] = ()  # none: a token's imprint is compared, its signature is not checked


def check_url(url: str) -> str:
    """The URL of a TSA, else ValueError (which does not quote it: it may carry credentials)."""
    message = "expected the http:// or https:// URL of an RFC 3161 time-stamping authority"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError:
        raise ValueError(message) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(message)
    return url


def load_ca(path: Path) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM file (a CA, or a bundle); raises ValueError saying why there are none."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TSA's CA certificate {path}: {exc.strerror}") from None
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise ValueError(f"{path} holds no PEM certificate (expected the CA that issued the TSA's "
                         "certificate)") from None


def fetch_token(authority: Authority, data: bytes) -> bytes:
    """Ask the TSA for a token over SHA-256(`data`) and return its reply as sent, once it checks out."""
    request = (TimestampRequestBuilder().data(data).hash_algorithm(HashAlgorithm.SHA256)
               .nonce(nonce=True).cert_request(cert_request=True).build())
    reply = _post(authority.url, request.as_bytes())
    _check_reply(reply, request, authority.roots)
    return reply


def _post(url: str, body: bytes) -> bytes:
    parts = urlsplit(url)
    headers = {"Content-Type": QUERY, "Accept": REPLY}
    if parts.username is not None:  # credentials in the URL: HTTP basic auth, sent without them in the URL
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        url = _without_credentials(parts)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            kind = response.headers.get_content_type()
            reply: bytes = response.read(MAX_REPLY + 1)
    except urllib.error.HTTPError as exc:
        raise TimestampError(f"the TSA answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise TimestampError(f"the TSA could not be reached: {_why(exc.reason)}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise TimestampError(f"the TSA could not be reached: {_why(exc)}") from None
    if kind != REPLY:
        raise TimestampError(f"the TSA answered {kind!r}, not {REPLY}")
    if len(reply) > MAX_REPLY:
        raise TimestampError("the TSA's reply is too large to be a TimeStampResp")
    return reply


def _why(error: object) -> str:
    """A network error in a few words; never its text when that might quote the URL."""
    if isinstance(error, TimeoutError):
        return f"no answer within {TIMEOUT_SECONDS} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__ if isinstance(error, BaseException) else "unreachable"


def _without_credentials(parts: SplitResult) -> str:
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return parts._replace(netloc=f"{netloc}:{parts.port}" if parts.port else netloc).geturl()


def _check_reply(reply: bytes, request: TimeStampRequest, roots: Sequence[x509.Certificate]) -> None:
    """Granted, over our imprint and nonce, signed by a TSA certificate that chains to the CA; else TimestampError."""
    response = _decode(reply)
    if response.status != PKIStatus.GRANTED:  # the verifier below accepts nothing else either
        raise TimestampError(f"the TSA refused: {_status_name(response.status)} "
                             f"({'; '.join(response.status_string)[:200] or 'no reason given'})")
    try:
        imprint = response.tst_info.message_imprint
    except ValueError:  # granted, yet no token inside
        raise TimestampError("the reply holds no token") from None
    if (imprint.hash_algorithm, imprint.message) != (SHA256, request.message_imprint.message):
        raise TimestampError("the token is not over the SHA-256 this run asked for")
    builder = VerifierBuilder.from_request(request)  # the nonce: a replayed old reply does not pass
    _verify(response, request.message_imprint.message, builder, roots)


def check_token(reply: bytes, sha256_hex: str, roots: Sequence[x509.Certificate]) -> str | None:
    """Why the stored reply does not vouch for the file with this SHA-256, or None when it does.

    Without `roots` only the imprint is compared: the caller must say that the TSA's signature went unchecked.
    """
    try:
        response = _decode(reply)
        if response.status != PKIStatus.GRANTED:
            return f"the token file holds a refusal ({_status_name(response.status)}), not a token"
        imprint = response.tst_info.message_imprint
        if imprint.hash_algorithm != SHA256:
            return "the token is not over a SHA-256 of the file"
        if imprint.message.hex() != sha256_hex:
            return "the token is over other bytes than this file's (another file, or the file changed)"
        if roots:
            _verify(response, bytes.fromhex(sha256_hex), VerifierBuilder(), roots)
    except TimestampError as exc:
        return str(exc)
    except ValueError:
        return "the token file is not a TimeStampResp"
    return None


def token_time(reply: bytes) -> datetime:
    """When the TSA says it saw the file (the token's genTime)."""
    return decode_timestamp_response(reply).tst_info.gen_time


def _decode(reply: bytes) -> TimeStampResponse:
    try:
        return decode_timestamp_response(reply)
    except ValueError:
        raise TimestampError("the reply is not a TimeStampResp") from None


def _verify(response: TimeStampResponse, digest: bytes, builder: VerifierBuilder,
            roots: Sequence[x509.Certificate]) -> None:
    for root in roots:
        builder = builder.add_root_certificate(root)
    try:
        builder.build().verify(response, digest)
    except VerificationError as exc:
        text = str(exc)
        if text.startswith("Error while verifying certificates"):  # the rest is an OpenSSL error stack
            text = "its signature or certificate does not verify against the TSA's CA"
        raise TimestampError(f"the token does not check out: {text}") from None
    except ValueError:
        raise TimestampError("the token could not be read") from None


def _status_name(status: int) -> str:
    try:
        return PKIStatus(status).name.lower()
    except ValueError:
        return f"status {status}"


def store_token(authority: Authority, files: RunFiles) -> Path:
    """Fetch the token for a signed run's log as it is now, and write it beside the log (atomically)."""
    reply = fetch_token(authority, files.log.read_bytes())
    temporary = files.timestamp.with_name(files.timestamp.name + ".tmp")
    temporary.write_bytes(reply)
    os.replace(temporary, files.timestamp)
    return files.timestamp


def without_token(directory: Path, before: str) -> Iterator[RunFiles]:
    """Signed runs older than the run named `before` that have no token yet, oldest first.

    Unsigned (dead) runs are left out: the next signed run's first line chains to their bytes, so its token covers
    them too.
    """
    for path in run_files(directory):
        files = RunFiles(path)
        if path.name < before and files.signed and not files.timestamp.exists():
            yield files


def stamp_runs(authority: Authority, current: RunFiles) -> list[Path]:
    """Store the token of this run, then of up to BACKLOG earlier signed runs that have none; return what was written.

    The first failure ends it: a TSA that is down would only make every further request wait for its timeout.
    Each failure is logged as `timestamp_failed` with its reason; the run goes on, and a later run tries again.
    """
    written: list[Path] = []
    for files in [current, *itertools.islice(without_token(current.log.parent, current.name), BACKLOG)]:
        try:
            path = store_token(authority, files)
        except TimestampError as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"cannot read the log or write its token: {exc.strerror or type(exc).__name__}"
        except Exception as exc:  # a defect here must not cost the run its WORM copy and metrics
            reason = f"unexpected {type(exc).__name__}"
        else:
            written.append(path)
            log.info("timestamp_stored", file=files.name, tsa=authority.where, time=rfc3339(token_time(
                path.read_bytes())))
            continue
        log.warning("timestamp_failed", file=files.name, tsa=authority.where, reason=reason,
                    detail="the run is not affected; a later run fetches the missing token")
        break
    return written
