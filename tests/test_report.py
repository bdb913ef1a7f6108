"""`audit report`: one HTML page that loads nothing, shows everything without script, and escapes the logs.

The demo's SQLite sandbox runs twice (two runs, erasure requests, a request waiting for a legal hold); its
report is written once per module and rendered by a real headless Chromium (the page has no script to run).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from retention.audit import AuditWriter, fingerprint, load_private_key, load_public_keys
from retention.audit.events import RuleFinished, RuleStarted, RunFinished, RunStarted
from retention.cli import main
from retention.demo.sandbox import build
from tests.conformance import COOKIE_RULE, add_cookies
from tests.conftest import NOW
from tests.helpers import Sandbox, audit_files, make_sandbox
from tests.stores import SqliteStore

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
browser = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found: scripts/ensure-chromium installs it "
                                                      "(make test runs it)")
OPENSSL = "openssl pkeyutl -verify -pubin -inkey audit-public.pem -rawin -in"


@dataclass
class Demo:
    root: Path
    report: Path
    result: Result

    def cli(self, *args: str) -> Result:
        env = {"RETENTION_PSEUDONYM_KEY": (self.root / "keys" / "pseudonym.key").read_text()}
        return CliRunner().invoke(main, ["--config", str(self.root / "retention.toml"), "--log-format", "json",
                                         *args], env=env, catch_exceptions=False)

    @property
    def html(self) -> str:
        return self.report.read_text()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    root = tmp_path_factory.mktemp("report")
    build(root, datetime.now(UTC) - timedelta(minutes=1))  # SQLite only: no embedded server needed
    demo = Demo(root, root / "out" / "report.html", None)  # type: ignore[arg-type]
    for _ in range(2):
        assert 0 == demo.cli("run").exit_code
    demo.result = demo.cli("audit", "report", "--out", str(demo.report))
    return demo


class Page(HTMLParser):
    """The tags and attributes of a page, and its visible text (style and SVG left out)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.words: list[str] = []
        self._hidden = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._hidden += tag in ("style", "svg")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("style", "svg")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.words.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.words))


def render_in_chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                           *args, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_command_writes_the_page_and_prints_one_line(demo: Demo) -> None:
    """Exit 0 when every run verifies; stdout is the result line alone (logs go to stderr)."""
    assert 0 == demo.result.exit_code, demo.result.output
    assert f"wrote {demo.report}: 2 runs, 0 problems\n" == demo.result.stdout
    assert demo.html.startswith("<!DOCTYPE html>")


def test_the_page_loads_nothing_and_has_no_script(demo: Demo) -> None:
    """No external script, stylesheet, font, image or url(): the page is whole offline and in an archive."""
    page = Page(demo.html)
    names = {tag for tag, _ in page.tags}
    assert not names & {"script", "link", "img", "iframe", "object", "embed", "base", "audio", "video", "source"}
    for _, attrs in page.tags:
        assert "src" not in attrs and not {a for a in attrs if a.startswith("on")}
        assert (attrs.get("href") or "#").startswith("#"), attrs  # only links within the page
    assert "url(" not in demo.html.lower() and "@import" not in demo.html.lower()
    assert not re.search(r"https?:", demo.html)


@browser
def test_chromium_shows_runs_requests_holds_and_how_to_verify(demo: Demo, tmp_path: Path) -> None:
    """Rendered, the page says what a reviewer needs, proof file and fingerprint included."""
    rendered = render_in_chromium(tmp_path, demo.report, "--dump-dom")
    assert 0 == rendered.returncode, rendered.stderr
    text = Page(rendered.stdout).text
    runs = audit_files_of(demo)
    assert all(path.name.split("-")[1][:-6] in text for path in runs)  # each run id
    assert "All 2 runs verify" in text
    r3 = re.search(r"r-3 child_data done .*?(\S+\.jsonl) SHA-256 ([0-9a-f]{64})", text)
    assert r3 is not None and r3.group(1) == runs[0].name, text  # the child's data, erased in the first run
    assert re.search(r"r-4 client_instruction pending \d+ records held \(holds in force: [^)]*litigation-2026-017",
                     text), text
    assert re.search(r"litigation-2026-017 client-contacts-after-client-leaves 1 #2", text), text  # holds in force
    key = load_public_keys([demo.root / "keys" / "audit-public.pem"])[0]
    assert fingerprint(key) in text and OPENSSL in text
    assert "cookie-data-24-months" in text and "Numbers per run" in text


@browser
def test_chromium_paints_the_page(demo: Demo, tmp_path: Path) -> None:
    """A screenshot of the page is not blank: the charts and tables are drawn."""
    shot = tmp_path / "report.png"
    rendered = render_in_chromium(tmp_path, demo.report, f"--screenshot={shot}", "--window-size=1200,2000")
    assert 0 == rendered.returncode, rendered.stderr
    assert (1200, 2000) == png_size(shot)
    assert png_has_several_colours(shot)


def test_a_tampered_run_is_shown_failing_and_the_command_exits_5(tmp_path: Path) -> None:
    """The report is written whatever it finds; the run whose bytes changed is marked, as `audit verify` would."""
    sandbox = cookie_sandbox(tmp_path)
    log = audit_files(sandbox)[1]
    data = bytearray(log.read_bytes())
    data[data.index(b'"changed":') + 10] ^= 1
    log.write_bytes(bytes(data))
    out = tmp_path / "report.html"
    result = sandbox.cli("audit", "report", "--out", str(out))
    assert 5 == result.exit_code
    assert f"wrote {out}: 2 runs, 1 problem\n" == result.stdout
    html = out.read_text()
    row = next(row for row in html.split("<tr>")[1:] if log.name in row)
    assert 'class="bad">bad signature' in row
    assert "1 of 2 files fail verification" in Page(html).text


def test_markup_in_a_log_is_shown_as_text(tmp_path: Path) -> None:
    """A signed log naming a rule, a hold and a request with markup: every value is escaped, nothing is a tag."""
    sandbox = cookie_sandbox(tmp_path, runs=0)
    key = load_private_key(sandbox.root / "audit-private.pem")
    writer = AuditWriter(sandbox.audit_dir, "0123456789abcdef", NOW, lambda: NOW, key, hashed_ids=False)
    rule, hold, request = "<script>alert(1)</script>", '"><img src=x onerror=alert(2)>', "r-<b>1</b>"
    writer.event(RunStarted("1", "0" * 64, "h", "u", "n", False, False, [rule], fingerprint(key.public_key()),
                            False, "none"))
    writer.event(RuleStarted(rule, "app<i>", "t", "delete", None, [hold]))
    writer.event(RuleFinished(rule, 9, 1, 1, 3, 0, 0, 5))
    writer.event(RuleStarted(rule, "app", "t", "delete", None, [hold], request, "child_data"))
    writer.event(RuleFinished(rule, 9, 1, 1, 0, 0, 0, 5, request, 0))
    writer.event(RunFinished("</td><script>", 0, 1, 0, 0, 0, 2, 2, 3, 0))
    writer.close()
    out = tmp_path / "report.html"
    assert 0 == sandbox.cli("audit", "report", "--out", str(out)).exit_code
    html = out.read_text()
    page = Page(html)
    assert {"script", "img", "b", "i"}.isdisjoint(tag for tag, _ in page.tags)
    assert "<script" not in html.lower()
    assert all(value in page.text for value in (rule, hold, request, "app<i>:t", "</td><script>"))


def test_a_dry_run_proves_no_request_and_a_remainder_keeps_one_pending(tmp_path: Path) -> None:
    """A request served only by a dry run is not yet served; records left after a real run keep it pending."""
    sandbox = cookie_sandbox(tmp_path, runs=0)
    key = load_private_key(sandbox.root / "audit-private.pem")
    for number, dry_run in enumerate((True, False)):
        writer = AuditWriter(sandbox.audit_dir, f"{number:016x}", NOW + timedelta(seconds=number),
                             lambda: NOW, key, hashed_ids=False)
        writer.event(RunStarted("1", "0" * 64, "h", "u", "n", False, dry_run, ["users"],
                                fingerprint(key.public_key()), False, "none"))
        for request, remaining in (("r-dry", 3), ("r-left", 2)):
            if (request == "r-dry") == dry_run:
                writer.event(RuleStarted("users", "app", "t", "delete", None, [], request, "end_user_request"))
                writer.event(RuleFinished("users", 9, 3, 0 if dry_run else 1, 0, 0, 0, 5, request, remaining))
        writer.event(RunFinished("ok", 0, 1, 0, 0, 0, 3, 1, 0, 0))
        writer.close()
    out = tmp_path / "report.html"
    assert 0 == sandbox.cli("audit", "report", "--out", str(out)).exit_code
    text = Page(out.read_text()).text
    assert "r-dry end_user_request not yet served - #1 0000000000000000: dry run -" in text, text
    assert "r-left end_user_request pending users: 2 records remain #2 0000000000000001: pending" in text, text


def cookie_sandbox(tmp_path: Path, runs: int = 2) -> Sandbox:
    store = SqliteStore(tmp_path / "app.db")
    store.standard_schema()
    add_cookies(store, NOW, *[timedelta(days=800 + i) for i in range(5)], timedelta(days=3))
    sandbox = make_sandbox(tmp_path / "sandbox", store)
    sandbox.write(COOKIE_RULE)
    for _ in range(runs):
        assert 0 == sandbox.cli("run").exit_code
    return sandbox


def audit_files_of(demo: Demo) -> list[Path]:
    return sorted((demo.root / "audit").glob("*.jsonl"))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def png_has_several_colours(path: Path) -> bool:
    """Decodes scanlines (8-bit RGB or RGBA) until a second colour appears; a blank page never shows one."""
    data = path.read_bytes()
    chunks, position = [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position: position + 8])
        chunks.append((kind, data[position + 8: position + 8 + length]))
        position += 12 + length
    header = dict(chunks)[b"IHDR"]
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert 8 == depth and colour_type in (2, 6)
    size = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride, previous, seen = width * size, bytearray(width * size), set()
    for row in range(height):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1: (row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - size] if i >= size else 0
            up, corner = previous[i], previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                guess = left + up - corner
                near = min((abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner))
                line[i] = (line[i] + near[2]) & 255
        seen.update(bytes(line[i: i + size]) for i in range(0, stride, size))
        if len(seen) > 1:
            return True
        previous = line
    return False
