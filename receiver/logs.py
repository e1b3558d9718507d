"""structlog set-up: one JSON object per line on stderr, with the request's bound context.

Logging can never fail or hold up a request or a background loop. Lines go to a bounded queue that one
thread writes out (``LineSink``): a sink that stopped reading (a pipe nobody drains, a stuck disk) fills
the queue, and a closed one makes writes fail — either way later lines are dropped and counted in
``creditrelay_log_lines_dropped_total``, and nothing waits. A line that cannot be rendered is dropped the
same way. uvicorn's own log records go through the same sink. A broken log sink costs log lines, not
requests.
"""

import atexit
import logging
import os
import queue
import sys
import threading
import time
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

from creditrelay.schema.errors import SettingsError

LEVELS = ("debug", "info", "warning", "error")


def _dropped() -> None:
    from creditrelay.receiver.metrics import LOG_LINES_DROPPED  # here: commands that never drop a line stay light

    LOG_LINES_DROPPED.inc()


class LineSink:
    """Lines written to ``stream`` by a thread of their own, through a queue of at most ``capacity``."""

    def __init__(self, stream: TextIO | None = None, capacity: int = 10_000) -> None:
        self.stream = stream  # None: whatever sys.stderr is when a line is written
        self.queue: queue.Queue[str] = queue.Queue(maxsize=capacity)
        self._pid = 0
        self._start = threading.Lock()

    def write(self, line: str) -> None:
        if self._pid != os.getpid():  # first line in this process (uvicorn's workers are processes)
            self._begin()
        try:
            self.queue.put_nowait(line)
        except queue.Full:
            _dropped()

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (at most ``timeout`` seconds) for the queued lines to be written, as a process ends."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def _begin(self) -> None:
        with self._start:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._drain, name="log-writer", daemon=True).start()
            atexit.register(self.flush)

    def _drain(self) -> None:
        while True:
            line = self.queue.get()
            stream = self.stream or sys.stderr
            try:
                stream.write(line + "\n")
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed or broken stream: the line is lost, the writer goes on
                _dropped()
            finally:
                self.queue.task_done()


SINK = LineSink()


class SinkLogger:
    """structlog's final logger: hands the rendered line to ``SINK``."""

    def __init__(self, *_args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        SINK.write(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg


class SinkHandler(logging.Handler):
    """A stdlib logging handler (for uvicorn's loggers) writing through ``SINK``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            SINK.write(self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is dropped, never raised
            _dropped()


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's loggers, written through ``SINK`` (its default config writes to stderr directly)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"sink": {"class": "creditrelay.receiver.logs.SinkHandler", "formatter": "plain"}},
        "loggers": {
            "uvicorn": {"handlers": ["sink"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["sink"], "level": "INFO", "propagate": False},
        },
    }


def never_raising(base: type[FilteringBoundLogger]) -> type[FilteringBoundLogger]:
    """``base`` (a structlog bound logger class) whose calls drop the line instead of raising."""

    class NeverRaising(base):  # type: ignore[valid-type,misc]  # a class made at run time by structlog
        def _proxy_to_logger(self, method_name: str, event: str | None = None, **event_kw: Any) -> Any:
            try:
                return super()._proxy_to_logger(method_name, event, **event_kw)
            except Exception:  # noqa: BLE001 - whatever a processor raised, the caller goes on
                _dropped()
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
        logger_factory=SinkLogger,
        cache_logger_on_first_use=True,
    )


class Noisy:
    """A log line that any client can cause, written at most once per ``every`` seconds with the count
    since the last one (the count is a metric too, by its caller)."""

    def __init__(self, event: str, every: float = 60.0, *, level: str = "warning") -> None:
        self.event = event
        self.every = every
        self.level = level
        self._last = float("-inf")
        self._count = 0

    def __call__(self, **fields: object) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= self.every:
            log = structlog.get_logger()
            getattr(log, self.level)(self.event, count=self._count, per_seconds=self.every, **fields)
            self._last, self._count = now, 0
