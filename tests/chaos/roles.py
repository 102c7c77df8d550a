"""``python -m tests.chaos.roles serve HOST PORT`` or ``... work``: a resizer role with every
setting read from the environment (``Settings.from_env``), RESIZER_MIN_REPLICAS included.

The ``resizer`` command builds its settings from its own flags, which do not cover
RESIZER_MIN_REPLICAS yet; the failover scenarios need it, so they start the roles' real entry
points (``resizer.api.serve``, ``resizer.worker.serve_worker``) through this instead.
"""

from __future__ import annotations

import asyncio
import os
import sys

from resizer import logs
from resizer.config import Settings


def main() -> None:
    role, *args = sys.argv[1:]
    logs.configure(os.environ.get("RESIZER_LOG_LEVEL", "INFO"), json=True)
    settings = Settings.from_env()
    if role == "serve":
        from resizer.api import serve

        serve(settings, args[0], int(args[1]))
    elif role == "work":
        from resizer.worker import serve_worker

        asyncio.run(serve_worker(settings))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
