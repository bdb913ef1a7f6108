"""Throwaway database servers for the test suite: started on 127.0.0.1 at a free port, stopped by PID."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else in the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL server binary {name!r} not found: install postgresql (apt-get install "
                           "postgresql) or set RETENTION_TEST_POSTGRES_URL to an existing server")
    return candidates[-1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the URL of a fresh PostgreSQL server (superuser `postgres`, trust auth) and stop it afterwards."""
    base, run_as = _postgres_base()
    data = base / "data"
    subprocess.run([postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
                    "-E", "UTF8", "--locale=C"], check=True, capture_output=True, **run_as)
    with _postgres_running(base, data, run_as) as url:
        yield url


@contextlib.contextmanager
def postgres_replica(primary: str) -> Iterator[str]:
    """Yield the URL of a streaming replica of `primary` (pg_basebackup -R), and stop it afterwards."""
    base, run_as = _postgres_base()
    data = base / "data"
    host_port = primary.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    subprocess.run([postgres_bin("pg_basebackup"), "-D", str(data), "-h", host, "-p", port, "-U", "postgres",
                    "-R", "-X", "stream", "--no-sync"], check=True, capture_output=True, **run_as)
    with _postgres_running(base, data, run_as, "-c", "hot_standby=on") as url:
        yield url


def _postgres_base() -> tuple[Path, dict[str, Any]]:
    """A folder for one server, owned by `postgres` when we are root (the server refuses to run as root)."""
    owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="rpg-"))
    (base / "s").mkdir()
    if owner:
        for path in (base, base / "s"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    return base, {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []} if owner else {}


@contextlib.contextmanager
def _postgres_running(base: Path, data: Path, run_as: dict[str, Any], *settings: str) -> Iterator[str]:
    port = free_port()
    log = base / "server.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [postgres_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(base / "s"), "-h", "127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=100", "-c", "shared_buffers=128MB", *settings],
            stdout=subprocess.DEVNULL, stderr=log_file, **run_as)
    try:
        _wait_for_port(port, process, "PostgreSQL", log)
        time.sleep(0.1)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _stop(process, base)


def _stop(process: subprocess.Popen[bytes], base: Path, timeout: float = 10) -> None:
    """Stop a server by its own PID (SIGTERM, then SIGKILL if it lingers) and remove its folder."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    shutil.rmtree(base, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Yield the endpoint URL of moto's S3 server, in its own process, on a free port."""
    port = free_port()
    base = Path(tempfile.mkdtemp(prefix="rmoto-"))
    log = base / "moto.log"
    executable = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen([str(executable), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=open(log, "wb"))  # noqa: SIM115
    try:
        _wait_for_port(port, process, "moto_server", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process, base)


@contextlib.contextmanager
def seaweedfs_server() -> Iterator[str]:
    """Yield the S3 endpoint of a SeaweedFS `weed mini` server (every port explicit), stopped by its PID.

    The admin identity comes from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, which must be set before it starts.
    """
    for attempt in range(3):  # nine ports picked up front: another process may take one before weed binds it
        base = Path(tempfile.mkdtemp(prefix="rweed-"))
        log = base / "weed.log"
        ports = {name: free_port() for name in ("master", "master.grpc", "volume", "volume.grpc", "filer",
                                                "filer.grpc", "s3", "s3.grpc", "admin")}
        executable = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        command = [executable, f"-logdir={base}", "mini", f"-dir={base}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   "-master.telemetry=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                   "-webdav=false", *[f"-{name.replace('.grpc', '.port.grpc') if '.grpc' in name else name + '.port'}="
                                      f"{port}" for name, port in ports.items()]]
        process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
        url = f"http://127.0.0.1:{ports['s3']}"
        try:
            _wait_for_port(ports["s3"], process, "SeaweedFS", log, timeout=60)
            _wait_for_s3(url, process, log)
        except RuntimeError:
            _stop(process, base, timeout=15)
            if attempt == 2:
                raise
            continue
        try:
            yield url
        finally:
            _stop(process, base, timeout=15)
        return


def _wait_for_s3(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """An open port is not a ready server: wait until S3 answers a real call (its filer and volume are up)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("s3", endpoint_url=url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not answer: {log.read_text(errors='replace')[-2000:]}") from None
            time.sleep(0.2)


@dataclasses.dataclass
class DaskCluster:
    """A real Dask scheduler and workers, each a process of its own (in its own process group)."""

    address: str
    workers: list[subprocess.Popen[bytes]]

    def worker_addresses(self) -> list[str]:
        from distributed import Client

        with Client(self.address, timeout="10s") as client:
            return sorted(client.scheduler_info(n_workers=-1)["workers"])

    def worker_pid(self, address: str) -> int:
        """The process id of the worker at `address` (its nanny and it share a process group)."""
        from distributed import Client

        with Client(self.address, timeout="10s") as client:
            return int(client.run(os.getpid, workers=[address])[address])


@contextlib.contextmanager
def dask_cluster(workers: int = 2, env: dict[str, str] | None = None) -> Iterator[DaskCluster]:
    """`dask scheduler` on 127.0.0.1 and `workers` x `dask worker` (one thread each), with `env` added to theirs.

    Workers take their secrets from their own environment, as they would where they are deployed.
    """
    base = Path(tempfile.mkdtemp(prefix="rdask-"))
    dask = str(Path(sys.executable).parent / "dask")
    scheduler_file = base / "scheduler.json"
    environment = {**os.environ, **(env or {})}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
             str(scheduler_file)], stdout=subprocess.DEVNULL, stderr=open(base / "scheduler.log", "wb"),  # noqa: SIM115
            start_new_session=True, env=environment))
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if processes[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start: {(base / 'scheduler.log').read_text()[-2000:]}")
            time.sleep(0.05)
        address = json.loads(scheduler_file.read_text())["address"]
        started = [subprocess.Popen(
            [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
             "--local-directory", str(base / f"worker-{n}")], stdout=subprocess.DEVNULL,
            stderr=open(base / f"worker-{n}.log", "wb"), start_new_session=True, env=environment)  # noqa: SIM115
            for n in range(workers)]
        processes += started
        cluster = DaskCluster(address, started)
        while len(cluster.worker_addresses()) < workers:
            if any(p.poll() is not None for p in started) or time.monotonic() > deadline:
                raise RuntimeError(f"dask workers did not start: {(base / 'worker-0.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield cluster
    finally:
        for process in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(base, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class TimestampAuthority:
    """A local RFC 3161 TSA: `url` answers with `openssl ts -reply`; `ca` issued its certificate.

    Other paths on the same server misbehave on purpose: `/http-500` answers HTTP 500, `/garbage` a reply that is no
    TimeStampResp, `/reject` a well-formed refusal (its TSA accepts no SHA-256 imprint), `/redirect` a 307 to `/tsr`.
    `other_ca` is a CA that issued nothing the TSA uses.
    """

    url: str
    ca: Path
    tsa_certificate: Path
    other_ca: Path
    authorizations: list[str | None]  # each query's Authorization header, in order

    def at(self, path: str) -> str:
        return self.url.rsplit("/", 1)[0] + path


_TSA_CONFIG = """
[ tsa ]
default_tsa = tsa_ok

[ tsa_ok ]
serial = {base}/serial
crypto_device = builtin
signer_cert = {base}/tsa.pem
signer_key = {base}/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256

[ tsa_reject ]
serial = {base}/serial
crypto_device = builtin
signer_cert = {base}/tsa.pem
signer_key = {base}/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha512
"""


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr[-2000:]}")


def _make_tsa_pki(base: Path) -> None:
    """A self-signed CA, a TSA certificate it issued (extendedKeyUsage critical, timeStamping), another CA."""
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    ca_extensions = ("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for name, subject in (("ca", "/CN=retention test TSA CA"), ("other-ca", "/CN=retention test other CA")):
        _openssl("req", "-x509", *curve, "-keyout", str(base / f"{name}.key"), "-out", str(base / f"{name}.pem"),
                 "-days", "3650", "-subj", subject, *ca_extensions)
    _openssl("req", "-new", *curve, "-keyout", str(base / "tsa.key"), "-out", str(base / "tsa.csr"),
             "-subj", "/CN=retention test TSA")
    (base / "tsa.ext").write_text("basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n"
                                  "extendedKeyUsage = critical,timeStamping\n")
    _openssl("x509", "-req", "-in", str(base / "tsa.csr"), "-CA", str(base / "ca.pem"), "-CAkey", str(base / "ca.key"),
             "-set_serial", "2", "-days", "3650", "-extfile", str(base / "tsa.ext"), "-out", str(base / "tsa.pem"))
    (base / "ts.cnf").write_text(_TSA_CONFIG.format(base=base))


@contextlib.contextmanager
def tsa_server() -> Iterator[TimestampAuthority]:
    """A TSA over HTTP on 127.0.0.1 (a thread of this process): each query is answered by `openssl ts -reply`."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    base = Path(tempfile.mkdtemp(prefix="rtsa-"))
    _make_tsa_pki(base)
    serial = threading.Lock()  # openssl ts keeps its serial number in a file: one reply at a time
    authorizations: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            authorizations.append(self.headers.get("Authorization"))
            if self.path == "/http-500":
                return self._answer(500, "text/plain", b"broken")
            if self.path == "/garbage":
                return self._answer(200, "application/timestamp-reply", b"\x30\x03\x02\x01\x00 not a reply")
            if self.path == "/redirect":  # to the very TSA: still not followed
                self.send_response(307)
                self.send_header("Location", "/tsr")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            if self.headers.get_content_type() != "application/timestamp-query" or self.path not in ("/tsr",
                                                                                                       "/reject"):
                return self._answer(400, "text/plain", b"not a timestamp query")
            with serial, tempfile.NamedTemporaryFile(dir=base, suffix=".tsq") as file:
                file.write(query)
                file.flush()
                section = "tsa_reject" if self.path == "/reject" else "tsa_ok"
                result = subprocess.run(["openssl", "ts", "-reply", "-config", str(base / "ts.cnf"), "-section",
                                         section, "-queryfile", file.name], capture_output=True)
            if result.returncode:
                return self._answer(500, "text/plain", result.stderr[-500:])
            return self._answer(200, "application/timestamp-reply", result.stdout)

        def _answer(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-tsa", daemon=True)
    thread.start()
    try:
        yield TimestampAuthority(f"http://127.0.0.1:{server.server_address[1]}/tsr", base / "ca.pem",
                                 base / "tsa.pem", base / "other-ca.pem", authorizations)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        shutil.rmtree(base, ignore_errors=True)
