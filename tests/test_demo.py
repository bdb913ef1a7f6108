"""`retention demo`: one command, no server, ends with a verified audit log and directions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_plans_runs_and_verifies_in_a_fresh_folder(tmp_path: Path) -> None:
    """The demo exits 0, changes the sandbox database, and its audit log verifies with openssl."""
    demo = tmp_path / "demo"
    result = subprocess.run([Path(sys.executable).parent / "retention", "demo", "--dir", str(demo)],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ}, check=False)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "== retention plan" in result.stdout and "== retention run" in result.stdout
    assert "OK    " in result.stdout and "FAIL" not in result.stdout
    assert "events:web_sessions" in result.stdout  # the MongoDB rule, on the embedded server
    assert "files:demo-uploads" in result.stdout  # the S3 rule, on moto in-process
    log = next((demo / "audit").glob("*.jsonl"))
    verified = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey",
                               str(demo / "keys" / "audit-public.pem"), "-rawin", "-in", str(log),
                               "-sigfile", f"{log}.sig"], capture_output=True, text=True, check=False)
    assert 0 == verified.returncode, verified.stderr


def test_demo_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path: Path) -> None:
    """A non-empty folder without the demo's marker is left alone."""
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run([Path(sys.executable).parent / "retention", "demo", "--dir", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert 2 == result.returncode
    assert "was not made by `retention demo`" in result.stderr
    assert "keep me" == (tmp_path / "precious.txt").read_text()
