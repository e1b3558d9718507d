"""structlog set-up: one JSON object per line on stderr, with the request's bound context."""

import logging
import sys

import structlog

from schema.settings import SettingsError

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    if level.lower() not in LEVELS:
        raise SettingsError(f"LOG_LEVEL must be one of {', '.join(LEVELS)}")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
