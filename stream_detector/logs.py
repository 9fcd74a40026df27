"""structlog set-up shared by every command.

Logs go to stderr so that stdout stays free for a command's own output (tables, reports). JSON on
a pipe or in a container (one object a line, easy to ship); readable colours on a terminal.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    numeric_level = logging.getLevelName(level.upper())
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
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
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # Resolve sys.stderr at each call, not now: whoever swaps it later (pytest's capture, a
        # redirect) must not leave loggers writing to a closed file.
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # librdkafka and other libraries log through the standard library; route them the same way.
    logging.basicConfig(level=numeric_level, stream=sys.stderr, format="%(name)s %(message)s")
