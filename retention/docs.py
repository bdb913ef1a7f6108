"""The README's CLI reference, generated from `--help` so the two cannot drift apart (tests/test_docs.py)."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name in sorted(group.commands):
        command = group.commands[name]
        if isinstance(command, click.Group):
            paths += _commands(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def cli_reference() -> str:
    """Every command's `--help`, as Markdown code blocks."""
    from retention.cli import main

    blocks = []
    for path in _commands(main):
        text = CliRunner().invoke(main, [*path, "--help"], terminal_width=100, prog_name="retention").output
        blocks.append(f"#### `retention {' '.join(path)}`\n\n```\n{text.rstrip()}\n```".replace("retention `", "`"))
    return "\n\n".join(blocks)


def update_readme(readme: Path) -> bool:
    """Rewrite the reference between the markers; True when the file changed."""
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{START}\n{cli_reference()}\n{END}{tail}"
    if updated != text:
        readme.write_text(updated)
    return updated != text


if __name__ == "__main__":
    print("README.md updated" if update_readme(Path("README.md")) else "README.md is current")
