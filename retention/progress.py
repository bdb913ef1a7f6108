"""Progress for people at a terminal: a bar per rule on stderr. Cron and CI get none (their logs are JSON)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Protocol, TextIO

import click

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar


class Progress(Protocol):
    def start(self, rule: str, total: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def finish(self) -> None: ...


class Silent:
    """No progress: the default, and what a run without a terminal gets."""

    def start(self, rule: str, total: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def finish(self) -> None:
        pass


class Bars:
    """One click progress bar per rule, with counts, drawn on stderr so stdout keeps only the result."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._bar: ProgressBar[int] | None = None

    def start(self, rule: str, total: int) -> None:
        self.finish()
        bar: ProgressBar[int] = click.progressbar(length=max(total, 1), label=f"{rule:<40.40}", file=self._stream,
                                                  show_pos=True, show_percent=True, width=30)
        self._bar = bar.__enter__()

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def for_terminal() -> Progress:
    return Bars() if sys.stdout.isatty() and sys.stderr.isatty() else Silent()
