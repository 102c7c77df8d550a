"""The bars of every section, collected as they are judged and printed at the end of a run as
rows of BENCHMARKS.md's summary table (paste them over the old rows)."""

from __future__ import annotations

import os

import attrs


@attrs.frozen
class Bar:
    name: str
    figure: str
    holds: bool | None  # None: a figure without a line to hold (or one that could not be taken)
    command: str
    load: float = attrs.field(factory=lambda: os.getloadavg()[0])

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "SHORT", None: "-"}[self.holds]

    def line(self) -> str:
        """One line for a section's own output."""
        return f"  {self.verdict:5}  {self.name}: {self.figure}"

    def row(self) -> str:
        return (
            f"| {self.name} | {self.figure} | {self.verdict} | {self.load:.2f} | `{self.command}` |"
        )


BARS: list[Bar] = []
HEADER = "| bar | figure | holds | load | command |\n|---|---|---|---|---|"


def judge(name: str, figure: str, holds: bool | None, command: str) -> str:
    """Record a bar; returns its line for the section's output."""
    bar = Bar(name, figure, holds, command)
    BARS.append(bar)
    return bar.line()


def table() -> list[str]:
    if not BARS:
        return []
    return [
        "summary: rows for the table at the top of BENCHMARKS.md (load = 1-min load average)",
        HEADER,
        *(bar.row() for bar in BARS),
    ]
