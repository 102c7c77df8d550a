"""What the bench runs: our `resizer`, and beside it, when asked, the baseline's.

The baseline is another checkout of resizer with its own ``make venv`` (``git worktree add
/work/wt-baseline face751`` then ``make venv`` there), named by ``--baseline PATH`` or
``RESIZER_BASELINE``. Its ``resizer`` runs from its own venv and its own source tree, so each
figure is taken of the code as it was, in the same run and on the same machine as ours.

Without a baseline, the bench prints the baseline figures recorded in BENCHMARKS.md (the
``Baseline figures`` table), saying so.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
BASELINE_ENV = "RESIZER_BASELINE"
BASELINE_COMMIT = "face751"


@attrs.frozen
class Target:
    """One checkout of resizer and the interpreter of its venv."""

    name: str
    root: Path
    python: str

    def command(self, *args: str) -> list[str]:
        """``resizer ARGS`` from this checkout (``-m resizer`` from its root: its own code)."""
        return [self.python, "-m", "resizer", *args]

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of its processes: no setting leaks in from ours."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RESIZER_") and k not in ("REDIS_URL", "VIRTUAL_ENV")
        }
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run(
            [self.python, *args],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=timeout,
        )
        return out.stdout

    def version(self) -> str:
        """The checkout's commit, short."""
        try:
            found = subprocess.run(
                ["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=True,
            )
        except (OSError, subprocess.CalledProcessError):
            return "?"
        return found.stdout.strip()


OURS = Target("ours", ROOT, sys.executable)


def baseline(path: str | None = None) -> Target | None:
    """The baseline checkout named by ``path`` or ``RESIZER_BASELINE``; None when neither is."""
    given = path or os.environ.get(BASELINE_ENV)
    if not given:
        return None
    root = Path(given).resolve()
    python = root / ".venv" / "bin" / "python"
    if not python.is_file():
        raise SystemExit(
            f"bench: the baseline {root} has no .venv/bin/python: run `make venv` there first"
        )
    return Target(BASELINE_COMMIT, root, str(python))


def targets(path: str | None = None) -> list[Target]:
    found = baseline(path)
    return [OURS] if found is None else [OURS, found]


_ROW = re.compile(r"^\|\s*`(?P<key>[\w.\- ]+)`\s*\|\s*(?P<value>[-\d.]+)\s*\|(?P<note>[^|]*)\|")


def recorded(key: str) -> tuple[float, str] | None:
    """A baseline figure as BENCHMARKS.md records it (its ``Baseline figures`` table): the value
    and the note beside it (when and how busy the machine was); None if it is not there."""
    try:
        text = BENCHMARKS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        match = _ROW.match(line)
        if match and match["key"] == key:
            return float(match["value"]), match["note"].strip()
    return None


def baseline_figure(key: str, measured: float | None) -> tuple[float | None, str]:
    """The baseline's figure for ``key``: measured in this run if it was, else the recorded one;
    with a few words that say which."""
    if measured is not None:
        return measured, f"{BASELINE_COMMIT} measured in this run"
    found = recorded(key)
    if found is None:
        return None, f"no baseline: pass --baseline or {BASELINE_ENV}, or record `{key}`"
    value, note = found
    return value, f"{BASELINE_COMMIT} as recorded in BENCHMARKS.md ({note}), not measured now"
