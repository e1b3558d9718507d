"""structlog set-up: one JSON object per line on stderr, with the request's bound context.

Logging can never fail a request or end a background loop: a log line that cannot be rendered or
written (a closed pipe, a full disk, a log shipper that died) is dropped and counted in
``creditrelay_log_lines_dropped_total``. A broken log sink costs log lines, not requests.
"""

import logging
import sys
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from schema.settings import SettingsError

LEVELS = ("debug", "info", "warning", "error")


def never_raising(base: type[FilteringBoundLogger]) -> type[FilteringBoundLogger]:
    """``base`` (a structlog bound logger class) whose calls drop the line instead of raising."""

    class NeverRaising(base):  # type: ignore[valid-type,misc]  # a class made at run time by structlog
        def _proxy_to_logger(self, method_name: str, event: str | None = None, **event_kw: Any) -> Any:
            try:
                return super()._proxy_to_logger(method_name, event, **event_kw)
            except Exception:  # noqa: BLE001 - whatever the sink or a processor raised, the caller goes on
                from receiver.metrics import LOG_LINES_DROPPED  # here: commands that never drop a line stay light

                LOG_LINES_DROPPED.inc()
                return None

    return NeverRaising


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
        wrapper_class=never_raising(
            structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()])
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
