"""Trusted timestamps (RFC 3161): a token from a time-stamping authority (TSA) that a run's log existed, byte for
byte, at a time the TSA vouches for.

The Ed25519 signature says who wrote a log; it cannot say when, since whoever holds the key can sign a backdated
file. The token can: the TSA signs the SHA-256 of the file together with its own clock. `<name>.jsonl.tsr` is the
DER `TimeStampResp` exactly as the TSA sent it (the TSA's certificate included), so plain
`openssl ts -verify -data <name>.jsonl -in <name>.jsonl.tsr -CAfile tsa-ca.pem` checks it without this project.

A TSA that cannot be reached never costs a run: the token is fetched by a later run (`backfill`), and until then
`audit verify` shows the gap. A TSA cannot hold a run either: each request has a deadline for all of it (connect,
TLS, every read), a run's requests together a budget, and a redirect is a failed request (never followed: it could
take the URL's credentials to another host). A later run fetches a token only for bytes whose signature verifies.
"""

from __future__ import annotations

import base64
import http.client
import io
import itertools
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import SplitResult, unquote, urlsplit

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
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

from retention.audit.events import RUN_FILE, RunFiles
from retention.audit.writer import run_files
from retention.timeutil import rfc3339

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

TIMEOUT_SECONDS = 10  # per request, all of it: a TSA that hangs or trickles its reply must not hold the run's lock
BUDGET_SECONDS = 30  # all of one run's requests: a backfill request starts only while a whole TIMEOUT_SECONDS fits
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
    deadline = _Deadline(TIMEOUT_SECONDS)
    try:
        with _opener(deadline).open(request, timeout=TIMEOUT_SECONDS) as response:
            kind = response.headers.get_content_type()
            reply: bytes = response.read(MAX_REPLY + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        if 300 <= exc.code < 400:
            raise TimestampError(f"the TSA answered HTTP {exc.code}, a redirect, not followed (it could take the "
                                 "URL's credentials elsewhere): configure the URL it redirects to") from None
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


class _Deadline:
    """The end of one request: each wait on the way (connect, TLS handshake, send, every read) gets what is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline has passed")
        return left


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes, each read waiting only for what is left of the deadline: the socket's own timeout is per
    read, so a reply trickled a byte at a time would outlast it many times over."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        super().__init__()
        self._sock, self._deadline = sock, deadline
        self._raw = sock.makefile("rb", buffering=0)  # holds the socket open, as http.client's own reader does

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        self._sock.settimeout(self._deadline.left())
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer of HTTP 3xx, not followed: urllib would send it on to any host (even from https to
    http) with every header, the basic auth made of the URL's credentials included."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message,
                         newurl: str) -> None:
        return None


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib (proxies from the environment as usual) without redirects, each request bounded by `deadline`."""

    class Response(http.client.HTTPResponse):
        def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None,
                     url: str | None = None) -> None:
            super().__init__(sock, debuglevel, method, url)
            self.fp.close()
            self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))

    class HTTPConnection(http.client.HTTPConnection):
        response_class = Response

        def connect(self) -> None:
            self.timeout = deadline.left()
            super().connect()
            self.sock.settimeout(deadline.left())  # sending the query (http), or the TLS handshake (https)

    class HTTPSConnection(http.client.HTTPSConnection, HTTPConnection):
        def connect(self) -> None:
            super().connect()  # HTTPConnection.connect above, then the TLS handshake
            self.sock.settimeout(deadline.left())  # sending the query

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(HTTPConnection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(HTTPSConnection, req)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler, _NoRedirects)


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


def store_token(authority: Authority, files: RunFiles, data: bytes) -> Path:
    """Fetch the token for `data`, a signed run's log as read, and write it beside the log (atomically)."""
    reply = fetch_token(authority, data)
    temporary = _temporary(files)
    try:
        temporary.write_bytes(reply)
        os.replace(temporary, files.timestamp)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return files.timestamp


def _temporary(files: RunFiles) -> Path:
    """Where a token is written before it is put in place: a dot file, which `audit verify` passes over."""
    return files.timestamp.with_name(f".{files.timestamp.name}.tmp")


def remove_temporaries(directory: Path) -> None:
    """Remove the temporary token files a crash left: `.<name>.jsonl.tsr.tmp`, or `<name>.jsonl.tsr.tmp` as earlier
    versions named them (which `audit verify` counts as foreign files)."""
    for path in directory.iterdir():
        name = path.name.removeprefix(".")
        if name.endswith(".jsonl.tsr.tmp") and RUN_FILE.match(name.removesuffix(".tsr.tmp")):
            path.unlink(missing_ok=True)


def signature_problem(files: RunFiles, data: bytes, key: Ed25519PublicKey) -> str | None:
    """Why the run's `.sig` is not `key`'s raw Ed25519 signature over `data`, else None."""
    try:
        key.verify(files.signature.read_bytes(), data)
    except InvalidSignature:
        return "its signature does not verify with this run's key (the file changed after it was signed, or " \
               "another key signed it)"
    return None


def without_token(directory: Path, before: str) -> Iterator[RunFiles]:
    """Signed runs older than the run named `before` that have no token yet, oldest first.

    Unsigned (dead) runs are left out: the next signed run's first line chains to their bytes, so its token covers
    them too.
    """
    for path in run_files(directory):
        files = RunFiles(path)
        if path.name < before and files.signed and not files.timestamp.exists():
            yield files


def stamp_runs(authority: Authority, current: RunFiles, key: Ed25519PublicKey) -> list[Path]:
    """Store the token of this run, then of up to BACKLOG earlier signed runs that have none; return what was written.

    Only a run whose signature verifies with `key` gets one (else the TSA would vouch for bytes changed after they
    were signed): one that does not is logged as `timestamp_skipped`, never stamped, and left to `audit verify`.
    A backfill request starts only while a whole TIMEOUT_SECONDS still fits in BUDGET_SECONDS; the rest is logged as
    `timestamp_deferred` and left to the next run. The first failure ends it: a TSA that is down would only make
    every further request wait for its timeout. Each failure is logged as `timestamp_failed` with its reason; the run
    goes on, and a later run tries again.
    """
    started = time.monotonic()
    directory = current.log.parent
    try:
        remove_temporaries(directory)
    except OSError as exc:
        log.warning("timestamp_temporary_not_removed", error=exc.strerror or type(exc).__name__)
    written: list[Path] = []
    backfilled = 0
    for files in itertools.chain([current], without_token(directory, current.name)):
        if files is not current:
            if backfilled >= BACKLOG:
                break
            if time.monotonic() - started + TIMEOUT_SECONDS > BUDGET_SECONDS:
                log.info("timestamp_deferred", file=files.name, tsa=authority.where,
                         detail=f"this run's {BUDGET_SECONDS} s for timestamps are spent; the next run fetches the "
                                "missing tokens")
                break
        try:
            data = files.log.read_bytes()
            problem = signature_problem(files, data, key)
            path = None if problem else store_token(authority, files, data)
        except TimestampError as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"cannot read the log or write its token: {exc.strerror or type(exc).__name__}"
        except Exception as exc:  # a defect here must not cost the run its WORM copy and metrics
            reason = f"unexpected {type(exc).__name__}"
        else:
            if path is None:
                log.warning("timestamp_skipped", file=files.name, reason=problem,
                            detail="no token is fetched for this file; `audit verify` reports it")
            else:
                written.append(path)
                backfilled += files is not current
                log.info("timestamp_stored", file=files.name, tsa=authority.where, time=rfc3339(token_time(
                    path.read_bytes())))
            continue
        log.warning("timestamp_failed", file=files.name, tsa=authority.where, reason=reason,
                    detail="the run is not affected; a later run fetches the missing token")
        break
    return written
