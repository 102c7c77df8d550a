"""Liveness of the roles that serve no HTTP: a file their loop touches, whose age a health check
(``resizer work --check``, ``resizer recover --check``) reads. It says the process runs and its
event loop turns, whether or not Redis answers: restarting a worker does not bring Redis back.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

RECOVER_EVERY_SECONDS = 10.0
"""How often the recover loop touches its file, however long it waits between passes."""


def alive_file(role: str) -> Path:
    """The file a process of ``role`` touches while it runs."""
    return Path(tempfile.gettempdir()) / f"resizer-{role}.alive"


def touch(role: str) -> None:
    alive_file(role).touch()


def is_alive(role: str, within: float) -> bool:
    """True if a process of ``role`` on this host touched its file in the last ``within`` s."""
    try:
        age = time.time() - alive_file(role).stat().st_mtime
    except OSError:
        return False
    return age <= within
