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
    report = (demo / "report.html").resolve()  # two runs, requests and holds, for compliance (tests/test_report.py)
    assert f"wrote {report}: 2 runs, 0 problems" in result.stdout and "r-4" in report.read_text()
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


def test_every_command_the_demo_suggests_works_as_printed(tmp_path: Path) -> None:
    """The "Try:" lines, run by a shell after the demo has exited (its in-process servers gone), all succeed."""
    demo = tmp_path / "demo"
    result = subprocess.run([Path(sys.executable).parent / "retention", "demo", "--dir", str(demo)],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ}, check=False)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "r-4      pending" in result.stdout and "held by litigation-2026-017" in result.stdout
    suggested = result.stdout.split("Try:\n", 1)[1]
    commands = [line.strip() for line in suggested.replace("\\\n", " ").splitlines() if line.strip()]
    assert 12 == len(commands)
    for command in commands[1:]:
        shell = subprocess.run(["bash", "-c", f"{commands[0]} && {command}"], capture_output=True, text=True,
                               cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith("DEMO_")},
                               check=False)
        assert 0 == shell.returncode, f"{command}\n{shell.stdout}{shell.stderr}"
        if "requests show r-3" in command:
            assert "child_data" in shell.stdout and "After (run" in shell.stdout and ": done" in shell.stdout
        if "requests certificate r-3" in command:
            assert "r-3-certificate.json.sig" in shell.stdout
        if "audit find 2" in command:
            assert "changed" in shell.stdout and "cookie-data-24-months" in shell.stdout
        if "holds list" in command:
            assert "tax-audit-2026" in shell.stdout and "litigation-2026-017" in shell.stdout
