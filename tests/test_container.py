"""deploy/Containerfile makes the image deploy/cron/cronjob.yaml expects: its command, user, working directory,
mount points and environment. Built for real where a container builder answers; read statically everywhere."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.installing import REPO

CONTAINERFILE = REPO / "deploy" / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in CONTAINERFILE.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(words[0].upper(), words[1].strip() if len(words) > 1 else "")
            for words in (line.split(None, 1) for line in joined.splitlines() if line.strip())]


def last(name: str) -> str:
    return [arguments for instruction, arguments in instructions() if instruction == name][-1]


def cronjob_container() -> dict[str, Any]:
    job = yaml.safe_load((REPO / "deploy" / "cron" / "cronjob.yaml").read_text())
    container: dict[str, Any] = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    return container


def made_folders() -> dict[str, str]:
    """Each folder the RUN steps make with `install -d`, and the owner they give it (root unless -o)."""
    folders = {}
    for _, arguments in (step for step in instructions() if step[0] == "RUN"):
        for command in arguments.split("&&"):
            words = shlex.split(command)
            if words[:2] == ["install", "-d"]:
                owner = words[words.index("-o") + 1] if "-o" in words else "0"
                folders.update({word: owner for word in words if word.startswith("/")})
    return folders


def test_the_image_runs_the_cronjobs_command_as_its_non_root_user_in_its_working_directory() -> None:
    """ENTRYPOINT + CMD is the CronJob's command (so the image alone runs the same job); USER is the
    securityContext's uid:gid, not root; WORKDIR is workingDir; `retention` is found on PATH in the venv."""
    container = cronjob_container()
    assert json.loads(last("ENTRYPOINT")) + json.loads(last("CMD")) == container["command"]
    context = container["securityContext"]
    assert f"{context['runAsUser']}:{context['runAsGroup']}" == last("USER")
    assert context["runAsNonRoot"] is True and 0 != context["runAsUser"]
    assert container["workingDir"] == last("WORKDIR")
    path = re.search(r"PATH=(\S+)", last("ENV"))
    assert path and path[1].split(":")[0] == "/opt/retention/bin" and container["command"][0] == "retention"
    assert any("python -m venv /opt/retention" in arguments for name, arguments in instructions() if name == "RUN")


def test_every_mount_point_exists_and_only_the_state_volume_is_the_jobs() -> None:
    """Folders for the config, the key and the state exist in the image (a read-only root cannot get them
    later); the job's user owns the state folder alone; the signing key's variable points into a read-only
    mount; with readOnlyRootFilesystem, the config's relative paths land on the writable state volume."""
    container = cronjob_container()
    folders = made_folders()
    uid = str(container["securityContext"]["runAsUser"])
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    for path, mount in mounts.items():
        folder = str(Path(path).parent) if "subPath" in mount else path
        assert folder in folders, folder
        assert (uid if not mount.get("readOnly") else "0") == folders[folder], path
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    environment = {item["name"]: item for item in container["env"]}
    key = Path(environment["RETENTION_AUDIT_KEY"]["value"])
    assert any(key.is_relative_to(path) and mount.get("readOnly") for path, mount in mounts.items())
    writable = [path for path, mount in mounts.items() if not mount.get("readOnly")]
    assert [f"{container['workingDir']}/var"] == writable  # state_dir var/retention, audit.dir var/audit, metrics


def test_nothing_secret_or_from_the_checkout_is_copied_in() -> None:
    """Only the wheel is copied; no ENV names a key, a URL or a secret (they come from the CronJob)."""
    copies = [arguments for name, arguments in instructions() if name in ("COPY", "ADD")]
    assert ["*.whl /tmp/wheels/"] == copies
    names = set(re.findall(r"(\w+)=", " ".join(arguments for name, arguments in instructions() if name == "ENV")))
    assert {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"} == names
    assert not names & {item["name"] for item in cronjob_container()["env"]}


def builder() -> str | None:
    """A container builder that answers (podman, docker), or None: most machines that run the tests have none."""
    for name in ("podman", "docker"):
        if shutil.which(name) and 0 == subprocess.run([name, "info"], capture_output=True, check=False,
                                                      timeout=60).returncode:
            return name
    return None


@pytest.mark.slow
def test_the_image_builds_and_runs_as_its_user(tmp_path: Path) -> None:
    """Where a builder answers (and can pull the base image): build from the wheel, then check the user and
    that the CronJob's command starts (`--version` in place of `run`, which would need a database)."""
    name = builder()
    if name is None:
        pytest.skip("no container builder answers here (podman info / docker info)")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path),
                    str(REPO)], check=True, timeout=300)
    tag = "localhost/retention-test:latest"
    subprocess.run([name, "build", "--file", str(CONTAINERFILE), "--tag", tag, str(tmp_path)], check=True,
                   timeout=1200)
    try:
        user = subprocess.run([name, "run", "--rm", "--read-only", "--entrypoint", "id", tag, "-u"],
                              capture_output=True, text=True, check=True, timeout=120).stdout.strip()
        assert str(cronjob_container()["securityContext"]["runAsUser"]) == user
        version = subprocess.run([name, "run", "--rm", "--read-only", tag, "--version"], capture_output=True,
                                 text=True, check=True, timeout=120)
        assert "retention" in version.stdout.lower()
    finally:
        subprocess.run([name, "rmi", "--force", tag], capture_output=True, check=False, timeout=120)
