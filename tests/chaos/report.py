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
    "Slow readers of a large original",
    "Decompression bombs",
    "No decode helper to kill",
    "Deeply nested JSON",
    "A stalled body",
    "Compressed bodies",
    "Slow clients",
    "An upload flood",
    "kill -9 of the Redis of up",
    "kill -9 of resizer up",
    "Lost replies",
    "100,000 tasks joined to one queued image",
    "Junk colour profiles",
    "Garbage uploads",
    "Secrets and sniffing",
    "A hostile server answering fetch",
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


HOSTILE_COLUMNS = (
    ("scenario", "attack"),
    ("answer", "answer"),
    ("figure", "figure"),
    ("alive", "still serving"),
    ("lost", "lost"),
    ("outcome", "result"),
)


def _markdown(rows: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> list[str]:
    cells = [[str(row.get(key, "")) for key, _ in columns] for row in rows]
    heads = [title for _, title in columns]
    widths = [max(len(c) for c in column) for column in zip(heads, *cells, strict=False)]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    return [line(heads), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(c) for c in cells
    ]


def table(rows: list[dict[str, Any]]) -> str:
    rows = ordered(rows)
    faults = [row for row in rows if row.get("kind", "fault") != "hostile"]
    attacks = [row for row in rows if row.get("kind") == "hostile"]
    out = _markdown(faults, COLUMNS) if faults else []
    if attacks:
        out += ["", "hostile: every attack answered by a 4xx, a bounded cost or a self-heal", ""]
        out += _markdown(attacks, HOSTILE_COLUMNS)
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
