"""structlog set up once per process: JSON lines when piped (containers), readable on a TTY."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog


def configure(
    level: str = "INFO", *, stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Services log to stdout (12-factor); client commands pass stderr to keep stdout for data.

    ``json`` None decides by the stream: JSON lines unless it is a terminal. The console format
    is coloured only on a terminal and never when ``NO_COLOR`` is set (https://no-color.org).
    """
    out = sys.stdout if stream is None else stream
    tty = out.isatty()
    as_json = not tty if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=tty and not os.environ.get("NO_COLOR"))
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
