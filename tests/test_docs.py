"""The README stays true: its CLI reference is the real `--help`, and its two commands exist."""

from __future__ import annotations

from pathlib import Path

from retention.docs import END, START, cli_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_cli_reference_matches_help() -> None:
    """Regenerate with `python -m retention.docs` when a command or option changes."""
    text = README.read_text()
    documented = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert cli_reference().strip() == documented


def test_readme_gives_the_two_commands() -> None:
    """A new user finds the demo command and the test command."""
    text = README.read_text()
    assert "make demo" in text and "make test" in text
