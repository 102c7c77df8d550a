"""The table ``make chaos`` ends with, from the scenarios' figures (also saved as JSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The order; a scenario not listed goes last.
SCENARIOS = (
    "Worker massacre",
    "Kill at every step",
    "Poison task",
    "Presumed dead but alive",
    "Redis goes away",
    "Recovery races",
    "Graceful shutdown",
    "Load",
    "Memory pressure",
    "Cluster primary killed",
    "Sentinel primary killed",
    "Cost per task",
    "Idle workers",
)


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def rank(row: dict[str, Any]) -> int:
        name = row.get("scenario", "")
        return SCENARIOS.index(name) if name in SCENARIOS else len(SCENARIOS)

    return sorted(rows, key=rank)


COLUMNS = (
    ("scenario", "scenario"),
    ("submitted", "submitted"),
    ("done", "DONE"),
    ("failed_expected", "FAILED (expected)"),
    ("lost", "lost"),
    ("faults", "kills/faults"),
    ("wall_seconds", "wall s"),
    ("outcome", "result"),
)


def table(rows: list[dict[str, Any]]) -> str:
    rows = ordered(rows)
    cells = [[str(row.get(key, "")) for key, _ in COLUMNS] for row in rows]
    heads = [title for _, title in COLUMNS]
    widths = [max(len(c) for c in column) for column in zip(heads, *cells, strict=False)]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [line(heads), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(c) for c in cells]
    total_lost = sum(int(row.get("lost", 0)) for row in rows)
    out.append("")
    out.append(f"lost in total: {total_lost}")
    return "\n".join(out)


def notes(rows: list[dict[str, Any]]) -> str:
    out = []
    for row in ordered(rows):
        if row.get("notes"):
            details = ", ".join(f"{k}={v}" for k, v in row["notes"].items())
            out.append(f"- {row['scenario']}: {details}")
    return "\n".join(out)


def main() -> None:
    rows = json.loads(Path(sys.argv[1]).read_text())
    print(table(rows))
    print()
    print(notes(rows))


if __name__ == "__main__":
    main()
