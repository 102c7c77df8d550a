"""structlog set up once per process: JSON lines when piped (containers), readable on a TTY.

Libraries log through the standard library instead (asyncio's ``socket.accept() out of system
resource``, aiohttp's ``Error handling request``, each with a traceback), and Python's warnings
print to stderr (Pillow's ``DecompressionBombWarning``); both go out through the same renderer,
so a log pipeline reads one JSON line per record, whoever wrote it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import TextIO, cast

import structlog


def configure(
    level: str = "INFO", *, stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Services log to stdout (12-factor); client commands pass stderr to keep stdout for data.

    ``json`` None decides by the stream: JSON lines unless it is a terminal. The console format
    is coloured only on a terminal and never when ``NO_COLOR`` is set (https://no-color.org).
    """
    given = sys.stdout if stream is None else stream
    out = cast(TextIO, _Unbreakable(given))
    threshold = logging.getLevelNamesMapping()[level.upper()]
    tty = given.isatty()
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
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(out, threshold, renderer)


class _Unbreakable:
    """The log stream, but a line it cannot take (the reader of a pipe gone: EPIPE) is dropped:
    a request, or a shutdown, must not fail for want of a log line (they answered 500 and
    ended with a traceback)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's handler this module installs (and replaces when set up again)."""


def _route_standard_logging(
    out: TextIO, threshold: int, renderer: structlog.typing.Processor
) -> None:
    handler = _Handler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),  # fields given as logging's ``extra``
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    # Other handlers stay (pytest's capture, an embedding application's own).
    for old in [each for each in root.handlers if isinstance(each, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    logging.captureWarnings(True)
