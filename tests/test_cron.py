"""The shipped crontab line works on Debian's cron: run with dash as cron runs it, it exports the systemd
EnvironmentFile (retention-cron), runs the job in its home, keeps the result out of the JSON log, and exits
with the job's code."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.installing import DEPLOY, rooted, run_cron_line, shipped_crontab

WRAPPER = DEPLOY / "retention-cron"

# What an admin writes for systemd's EnvironmentFile=, and what systemd makes of it.
ENV_FILE = r"""# /etc/retention/env
; comments either way

APP_DATABASE_URL=postgresql://retention:s3cr%40t@db.internal:5432/app?sslmode=verify-full&application_name=retention
RETENTION_AUDIT_KEY = /etc/retention/audit-private.pem
RETENTION_PSEUDONYM_KEY="a secret with spaces, \"quotes\", \\ and $NOT_EXPANDED"
S3_NOTE='single quoted: & ; $HOME "as is" \n'
SPACED=  inner  spaces kept, outer dropped<BLANKS>
ESCAPED=a\ b\\c
EMPTY=
NO_ASSIGNMENT_HERE
FAKE_EXIT=3
""".replace("<BLANKS>", " \t ")
EXPECTED = {
    "APP_DATABASE_URL":
        "postgresql://retention:s3cr%40t@db.internal:5432/app?sslmode=verify-full&application_name=retention",
    "RETENTION_AUDIT_KEY": "/etc/retention/audit-private.pem",
    "RETENTION_PSEUDONYM_KEY": 'a secret with spaces, "quotes", \\ and $NOT_EXPANDED',
    "S3_NOTE": 'single quoted: & ; $HOME "as is" \\n',
    "SPACED": "inner  spaces kept, outer dropped",
    "ESCAPED": "a b\\c",
    "EMPTY": "",
}

# Stands in for /opt/retention/bin/retention: records how it was started, prints a result on stdout and a log
# line on stderr, and exits with $FAKE_EXIT (set by the environment file).
FAKE_RETENTION = f"""#!{sys.executable}
import json, os, sys
json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}, open("seen.json", "w"))
print("the result table")
print(json.dumps({{"event": "run_finished", "level": "info"}}), file=sys.stderr)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The folders the crontab line uses, under tmp_path; the real wrapper and a fake retention installed."""
    for folder in ("etc/retention", "var/lib/retention", "var/log/retention", "opt/retention/bin"):
        (tmp_path / folder).mkdir(parents=True)
    shutil.copy2(WRAPPER, tmp_path / "opt/retention/bin/retention-cron")
    fake = tmp_path / "opt/retention/bin/retention"
    fake.write_text(FAKE_RETENTION)
    fake.chmod(0o755)
    return tmp_path


def test_the_wrapper_is_executable_and_shellcheck_clean() -> None:
    assert os.stat(WRAPPER).st_mode & stat.S_IXUSR
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", "--shell=sh", str(WRAPPER)], capture_output=True, text=True, check=False)
    assert 0 == result.returncode, result.stdout


def test_the_crontab_line_exports_the_environment_file_and_keeps_results_out_of_the_log(tree: Path) -> None:
    """Under dash: every value arrives as systemd would read it (a URL with & and ?, spaces, quotes, $), the
    job runs in /var/lib/retention with the shipped arguments, its exit code is the line's, stdout replaces
    last-run.txt and stderr is appended to run.jsonl, which holds JSON lines only; cron has nothing to mail."""
    (tree / "etc/retention/env").write_text(ENV_FILE)
    entry = shipped_crontab()
    for night in (1, 2):
        result = run_cron_line(entry, tree)
        assert (3, "", "") == (result.returncode, result.stdout, result.stderr)
        seen = json.loads((tree / "var/lib/retention/seen.json").read_text())
        assert str(tree / "var/lib/retention") == seen["cwd"]
        assert ["--config", str(tree / "etc/retention/retention.toml"), "--log-format", "json", "run"] == seen["argv"]
        assert EXPECTED == {name: seen["env"].get(name) for name in EXPECTED}
        assert "NO_ASSIGNMENT_HERE" not in seen["env"]
        assert "the result table\n" == (tree / "var/log/retention/last-run.txt").read_text()
        log = (tree / "var/log/retention/run.jsonl").read_text().splitlines()
        assert night == len(log) and all(json.loads(line)["event"] == "run_finished" for line in log)


@pytest.mark.parametrize(("content", "line", "why"), [
    ('APP_DATABASE_URL="postgresql://db/app\n', 1, "a quoted value left open"),
    ("# ok\nAPP_DATABASE_URL=postgresql://db/app?a=1\\\n&b=2\n", 2, "a value continued on the next line"),
    ("APP-URL=postgresql://db/app\n", 1, "not a variable name"),
    (None, 0, "cannot read the environment file"),
])
def test_an_environment_file_it_cannot_read_as_systemd_would_stops_the_run_with_exit_2(
        tree: Path, content: str | None, line: int, why: str) -> None:
    """Nothing runs; run.jsonl gets one JSON line naming the file and line, never a value."""
    if content is not None:
        (tree / "etc/retention/env").write_text(content)
    result = run_cron_line(shipped_crontab(), tree)
    assert (2, "", "") == (result.returncode, result.stdout, result.stderr)
    assert not (tree / "var/lib/retention/seen.json").exists()
    [logged] = [json.loads(text) for text in (tree / "var/log/retention/run.jsonl").read_text().splitlines()]
    assert ("env_file_refused", "error", str(tree / "etc/retention/env"), line) == (
        logged["event"], logged["level"], logged["env_file"], logged["line"])
    assert logged["error"].startswith(why) and "postgresql" not in json.dumps(logged)


def systemd_reads(line: str) -> tuple[str, str] | str | None:
    """systemd's EnvironmentFile= parser (parse_env_file_internal in src/basic/env-file.c), transcribed for one
    line followed by a newline: (KEY, value), None for a line it skips, "continued" when the value goes on in
    the next line."""
    blanks = " \t"
    state, key, value = "pre_key", "", ""
    key_blank: int | None = None  # where the key's trailing blanks start
    value_blank: int | None = None  # where an unquoted value's trailing blanks start
    for char in line:
        if state == "pre_key":
            if char in "#;":
                state = "comment"
            elif char not in blanks:
                state, key = "key", char
        elif state == "key":
            if char == "=":
                state = "pre_value"
            else:
                key_blank = (key_blank if key_blank is not None else len(key)) if char in blanks else None
                key += char
        elif state == "pre_value":
            if char in "'\"\\":
                state = {"'": "single", '"': "double", "\\": "value_escape"}[char]
            elif char not in blanks:
                state, value = "value", value + char
        elif state == "value":
            if char == "\\":
                state, value_blank = "value_escape", None
            else:
                value_blank = (value_blank if value_blank is not None else len(value)) if char in blanks else None
                value += char
        elif state == "value_escape":
            state, value = "value", value + char
        elif state == "single":
            state, value = ("pre_value", value) if char == "'" else ("single", value + char)
        elif state == "double":
            if char == '"':
                state = "pre_value"
            elif char == "\\":
                state = "double_escape"
            else:
                value += char
        elif state == "double_escape":
            state, value = "double", value + (char if char in '"\\`$' else "\\" + char)
    if state in ("value_escape", "single", "double", "double_escape"):
        return "continued"
    if state not in ("pre_value", "value"):
        return None
    if state == "value" and value_blank is not None:
        value = value[:value_blank]
    return (key[:key_blank] if key_blank is not None else key), value


NAMES = st.sampled_from(["K_A", "K_B", "k9", "_K", " K_A ", "\tK_B\t"])
BAD_NAMES = st.sampled_from(["9K", "K-A", "K A", "", "é"])
CHARS = list("aZ9_ \t'\"\\$=#;&?`é{}*")
TEXT = st.text(st.sampled_from(CHARS), max_size=12)
# values built of the pieces systemd tells apart, so that most lines are read to the end and compared
PIECES = st.one_of(
    TEXT,
    st.builds(lambda text: f"'{text}'", st.text(st.sampled_from([c for c in CHARS if c != "'"]), max_size=8)),
    st.builds(lambda tokens: '"' + "".join(tokens) + '"', st.lists(st.sampled_from(
        ["a", " ", "\t", "'", "$", "`", "&", "é", '\\"', "\\\\", "\\$", "\\`", "\\a", "\\n", "\\ "]), max_size=6)),
    st.sampled_from([" ", "\t", "\\", "\\ ", "#", ";"]))
VALUES = st.builds("".join, st.lists(PIECES, max_size=4))
LINES = st.one_of(st.builds(lambda name, value: f"{name}={value}", NAMES, VALUES),
                  st.builds(lambda name, value: f"{name}={value}", NAMES, VALUES),
                  st.builds(lambda name, value: f"{name}={value}", BAD_NAMES, VALUES),
                  st.builds(lambda blank, mark, text: f"{blank}{mark}{text}", st.sampled_from(["", " ", "\t"]),
                            st.sampled_from(["#", ";"]), TEXT),
                  TEXT)


@settings(max_examples=200, deadline=None)
@given(st.lists(LINES, min_size=1, max_size=6))
def test_the_wrapper_reads_each_line_as_systemd_does_or_refuses_it(tmp_path_factory: pytest.TempPathFactory,
                                                                     lines: list[str]) -> None:
    """Against the transcription above: the same variables with the same values, or exit 2 at the first line
    it does not take (a value going on in the next line, a key that is not a shell name)."""
    env_file = tmp_path_factory.mktemp("env") / "env"
    env_file.write_text("".join(f"{line}\n" for line in lines))
    expected: dict[str, str] = {}
    refused_at = None
    for number, line in enumerate(lines, 1):
        read = systemd_reads(line)
        if read == "continued" or (isinstance(read, tuple) and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", read[0])):
            refused_at = number
            break
        if isinstance(read, tuple):
            expected[read[0]] = read[1]
    result = subprocess.run([shutil.which("dash") or "/bin/sh", str(WRAPPER), str(env_file), "/usr/bin/env", "-0"],
                            env={}, capture_output=True, check=False)
    if refused_at is not None:
        assert 2 == result.returncode and refused_at == json.loads(result.stderr)["line"], (lines, result.stderr)
    else:
        assert 0 == result.returncode, (lines, result.stderr)
        environment = dict(item.decode().split("=", 1) for item in result.stdout.split(b"\0") if item)
        assert expected == {name: value for name, value in environment.items() if name not in ("PWD", "OLDPWD")}


def test_the_crontab_names_only_paths_the_tree_stands_in_for(tmp_path: Path) -> None:
    """So the runs above exercise every path of the real line (none is left pointing at the real system)."""
    entry = shipped_crontab()
    command = rooted(entry.command, tmp_path)
    assert all(word.startswith((str(tmp_path), ">" + str(tmp_path), "2>>" + str(tmp_path))) or not word.startswith(
        ("/", ">/", "2>>/")) for word in command.split())
