"""The deploy files run the same CLI on the same schedule as the shipped config says."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import yaml

from retention.config import load_config
from tests.installing import shipped_crontab

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "cron"
CONFIG = load_config(ROOT / "config" / "retention.toml")


def systemd(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / name)
    return parser


def runs_retention(command: list[str]) -> bool:
    """`retention [--config PATH] [global options] run`, with the config at /etc/retention/retention.toml."""
    return (command[0].endswith("retention") and command[command.index("--config") + 1] ==
            "/etc/retention/retention.toml" and command[-1] == "run")


def test_the_crontab_line_matches_the_config_schedule() -> None:
    """Five cron fields equal job.schedule; the line runs `retention ... run` as the retention user through
    retention-cron with the systemd unit's EnvironmentFile, in its WorkingDirectory, results and logs apart.
    Debian's cron has no CRON_TZ: the file must not pretend to set the zone, and says its hours are local."""
    text = (DEPLOY / "crontab").read_text()
    entry = shipped_crontab()
    assert CONFIG.job.schedule.split() == entry.schedule and "retention" == entry.user
    assert "CRON_TZ" not in entry.environment and "TZ" not in entry.environment
    assert "local time" in text and CONFIG.job.timezone in text.splitlines()[0]
    service = systemd("retention.service")["Service"]
    change_directory, run = entry.command.split(" && ")
    assert ["cd", service["WorkingDirectory"]] == shlex.split(change_directory)
    *command, results, logs = shlex.split(run)
    wrapper, env_file, *command = command
    assert (wrapper, env_file) == (str(Path(service["ExecStart"].split()[0]).parent / "retention-cron"),
                                   service["EnvironmentFile"])
    assert runs_retention(command) and shlex.split(service["ExecStart"]) == command
    assert (">/var/log/retention/last-run.txt", "2>>/var/log/retention/run.jsonl") == (results, logs)


def test_the_systemd_timer_and_service_match_and_are_sandboxed() -> None:
    """OnCalendar is 03:00 UTC like "0 3 * * *"; the service runs the CLI oneshot with sandboxing options."""
    minute, hour, *_ = CONFIG.job.schedule.split()
    assert f"*-*-* {int(hour):02d}:{int(minute):02d}:00 UTC" == systemd("retention.timer")["Timer"]["OnCalendar"]
    service = systemd("retention.service")["Service"]
    assert "oneshot" == service["Type"]
    assert runs_retention(shlex.split(service["ExecStart"]))
    for option, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                          ("PrivateTmp", "yes"), ("KillSignal", "SIGTERM")):
        assert value == service[option], option


def test_logrotate_rotates_the_files_the_crontab_line_writes() -> None:
    """deploy/cron/logrotate names exactly the crontab's two output files."""
    redirections = re.findall(r"\d?>>?(/\S+)", shipped_crontab().command)
    rotated = (DEPLOY / "logrotate").read_text().split("{")[0].split("\n")[-1].split()
    assert sorted(redirections) == sorted(rotated) and 2 == len(rotated)


def test_the_metrics_file_is_where_the_units_may_write_and_readme_says() -> None:
    """The shipped config's metrics file, relative to the units' working directory (cron runs there too), lies
    under the service's ReadWritePaths (ProtectSystem=strict makes everything else read-only), README names that
    path, and in the pod it lands on the writable state volume."""
    service = systemd("retention.service")["Service"]
    assert CONFIG.job.metrics_file is not None and not CONFIG.job.metrics_file.is_absolute()
    on_server = Path(service["WorkingDirectory"]) / CONFIG.job.metrics_file
    assert any(on_server.is_relative_to(path) for path in service["ReadWritePaths"].split())
    assert f"`{on_server}`" in (ROOT / "README.md").read_text()
    container = yaml.safe_load((DEPLOY / "cronjob.yaml").read_text())["spec"]["jobTemplate"]["spec"]["template"][
        "spec"]["containers"][0]
    in_pod = Path(container["workingDir"]) / CONFIG.job.metrics_file
    assert any(in_pod.is_relative_to(mount["mountPath"]) and not mount.get("readOnly")
               for mount in container["volumeMounts"])


def test_the_kubernetes_cronjob_forbids_overlap_and_uses_secrets_and_a_configmap() -> None:
    """Same schedule and time zone, concurrencyPolicy Forbid, key and secrets from Secrets, config from a ConfigMap."""
    job = yaml.safe_load((DEPLOY / "cronjob.yaml").read_text())
    assert ("CronJob", CONFIG.job.schedule, CONFIG.job.timezone, "Forbid") == (
        job["kind"], job["spec"]["schedule"], job["spec"]["timeZone"], job["spec"]["concurrencyPolicy"])
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert runs_retention(container["command"])
    env = {item["name"]: item for item in container["env"]}
    assert "secretKeyRef" in env["RETENTION_PSEUDONYM_KEY"]["valueFrom"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "retention-config" == volumes["config"]["configMap"]["name"]
    assert "retention-signing-key" == volumes["signing-key"]["secret"]["secretName"]
    assert "Never" == pod["restartPolicy"] and container["securityContext"]["runAsNonRoot"] is True


def test_the_dask_cluster_gives_workers_the_stores_and_the_pseudonym_secret_but_never_the_signing_key() -> None:
    """Workers run the CronJob's image and get every secret from the CronJob's Secret; the signing key stays with
    the coordinator; the scheduler serves the address the README tells the config to use."""
    cluster = yaml.safe_load((ROOT / "deploy" / "dask" / "daskcluster.yaml").read_text())
    cronjob = yaml.safe_load((DEPLOY / "cronjob.yaml").read_text())
    coordinator = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    assert coordinator["image"] == worker["image"] == cluster["spec"]["scheduler"]["spec"]["containers"][0]["image"]
    worker_env = {item["name"]: item for item in worker["env"]}
    coordinator_env = {item["name"]: item for item in coordinator["env"]}
    assert "RETENTION_AUDIT_KEY" not in worker_env
    assert "retention-signing-key" not in (ROOT / "deploy" / "dask" / "daskcluster.yaml").read_text()
    assert set(worker_env) == set(coordinator_env) - {"RETENTION_AUDIT_KEY"}
    assert all(worker_env[name] == coordinator_env[name] for name in worker_env)
    assert all("secretKeyRef" in item["valueFrom"] for item in worker_env.values())  # no literal secret
    assert "--nthreads" in worker["args"] and worker["securityContext"]["runAsNonRoot"] is True
    ports = {port["port"] for port in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert 8786 in ports and "retention" == cluster["metadata"]["name"]  # tcp://retention-scheduler:8786
    readme = (ROOT / "README.md").read_text()
    assert 'executor = "tcp://retention-scheduler:8786"' in readme
