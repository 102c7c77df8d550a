"""The ``resizer`` command: a service role's plain command line runs without typer
(``resizer.roles``), every other one is typer's (``resizer.cli``)."""

from __future__ import annotations

import gc
import sys


def main() -> None:
    # The collector is off while the command imports what it runs (resizer.memory says why);
    # every path turns it back on through memory.imports_done once they are in.
    gc.disable()
    from resizer import memory, roles

    run = roles.service_role(sys.argv[1:])
    if run is None:
        from resizer.cli import main as typer_main

        memory.imports_done()
        typer_main()
        return
    # structlog imports rich's traceback module whenever rich is installed (typer depends on
    # it): ~3 MB and ~20 ms of every service process, for nothing, as logs.py renders exceptions
    # itself. A service process never imports typer, so it can do without rich altogether.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    try:
        run()
    except KeyboardInterrupt:
        sys.stderr.write("Aborted!\n")  # as click says it
        sys.exit(1)


if __name__ == "__main__":
    main()
