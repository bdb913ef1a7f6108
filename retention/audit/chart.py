"""A small line chart as inline SVG: no script, no external resource, readable printed in black and white.

Every text that reaches the markup is escaped here; callers pass plain values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 520, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 30, 26  # room for the y labels, the legend and the x labels
MARKERS_UP_TO = 60  # runs; past that the dots would merge into the line
# Okabe-Ito colours (told apart by colour-blind readers) and a dash pattern each (told apart when printed grey)
STYLES = (("#0072B2", ""), ("#E69F00", "7 3"), ("#D55E00", "2 3"), ("#009E73", "10 3 2 3"), ("#CC79A7", "4 4"))


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[int | None]  # one per x position; None: no data point there (the line breaks)


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series]) -> str:
    """An SVG of `series` over `labels` (the x positions), the y axis from 0 to a round number above the top."""
    count = len(labels)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _round_up(max((v for s in series for v in s.values if v is not None), default=0))

    def x(i: int) -> float:
        return LEFT + (plot_w / 2 if count == 1 else i * plot_w / (count - 1))

    def y(value: float) -> float:
        return TOP + plot_h - value * plot_h / top

    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
             f'height="{HEIGHT}" role="img" class="chart"><title>{escape(title)}</title>']
    for tick in (0, top / 2, top):  # grid and y labels
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                     f'stroke="{"#888" if tick == 0 else "#ddd"}"/>'
                     f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{_number(tick)}</text>')
    step = max(1, math.ceil(count / 12))
    for i, label in enumerate(labels):
        if i % step == 0 or i == count - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(label)}</text>')
    for index, line in enumerate(series):
        colour, dash = STYLES[index % len(STYLES)]
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<g stroke="{colour}" fill="{colour}"><title>{escape(line.name)}</title>')
        for segment in _segments(line.values):
            if len(segment) > 1:
                points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in segment)
                parts.append(f'<polyline points="{points}" fill="none" stroke-width="2"{dashes}/>')
            for i, value in segment if count <= MARKERS_UP_TO or len(segment) == 1 else ():
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(value):.1f}" r="3">'
                             f'<title>{escape(labels[i])}: {escape(line.name)} {value}</title></circle>')
        parts.append("</g>")
        legend_x = LEFT + index * 115
        parts.append(f'<line x1="{legend_x}" x2="{legend_x + 24}" y1="12" y2="12" stroke="{colour}" '
                     f'stroke-width="2"{dashes}/><text x="{legend_x + 30}" y="16">{escape(line.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _segments(values: Sequence[int | None]) -> list[list[tuple[int, int]]]:
    """Runs of consecutive data points: a missing value breaks the line rather than joining across it."""
    segments: list[list[tuple[int, int]]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            segments.append([])
        else:
            segments[-1].append((i, value))
    return [segment for segment in segments if segment]


def _round_up(value: int) -> int:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value` (at least 1; a whole number)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    return next(int(top) for m in (1, 2, 2.5, 5, 10) if (top := m * power) >= value and top == int(top))


def _number(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
