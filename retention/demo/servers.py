"""The in-process servers the demo's MongoDB and S3 rules run on, when their packages are installed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def embedded_mongodb(storage: Path) -> Iterator[str | None]:
    """An in-process MongoDB wire-protocol server (SecantusDB) with its data in `storage`; None if not installed."""
    try:
        from secantus import SecantusDBServer
    except ImportError:
        yield None
        return
    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=str(storage))
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


@contextmanager
def embedded_s3() -> Iterator[str | None]:
    """moto's S3 server in-process, on a free port; None if moto is not installed."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on the demo's screen
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
