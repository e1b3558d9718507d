"""``migrate`` and ``serve``: the schema, and the receiver under uvicorn."""

import argparse
import gc
import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from creditrelay.cli.base import CommandError, command, emit, integer
from creditrelay.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from starlette.applications import Starlette


def cmd_migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from creditrelay.schema.database import make_engine
    from creditrelay.schema.migrate import head_revision, upgrade

    upgrade(make_engine(settings.database_url))
    return emit({"database": settings.database_url.get_backend_name(), "revision": head_revision()})


def asgi_app() -> "Starlette":
    """The app each uvicorn worker builds from the environment (``serve`` checked it first)."""
    from creditrelay.app import build_app
    from creditrelay.receiver.logs import configure_logging
    from creditrelay.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level)
    app = build_app(settings)
    # What is loaded by now (modules, tables, compiled schemas) lives as long as the process: frozen out
    # of the collector's reach, a full collection no longer walks it and stalls requests.
    gc.collect()
    gc.freeze()
    return app


def schema_is_current(engine: "Engine", check: Callable[["Engine"], bool], wait: float = 30.0) -> bool | None:
    """The schema check, waiting up to ``wait`` seconds for the database; None if it never answered.

    A receiver restarted during a database outage must come up (and answer 503 until the database is
    back), not crash.
    """
    import structlog
    from sqlalchemy.exc import OperationalError
    from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

    log = structlog.get_logger()
    retrying = Retrying(
        retry=retry_if_exception_type(OperationalError),
        stop=stop_after_delay(wait),
        wait=wait_fixed(1),
        before_sleep=lambda _: log.warning("waiting_for_database", purpose="schema check"),
        reraise=True,
    )
    try:
        return retrying(check, engine)
    except OperationalError as error:
        log.warning(
            "schema_not_checked", reason="database unreachable; answering 503 until it is back", error=str(error.orig)
        )
        return None


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import structlog
    import uvicorn

    from creditrelay.receiver.http_limits import server_options
    from creditrelay.receiver.logs import uvicorn_log_config
    from creditrelay.schema.database import make_engine
    from creditrelay.schema.migrate import is_current

    settings.require_secrets()
    if settings.webhook_writer == "auto":  # decided here, where the number of workers is known
        from creditrelay.app import writer_processes

        os.environ["WEBHOOK_WRITER"] = "process" if writer_processes(settings, workers=args.workers) else "thread"
    structlog.get_logger().info(
        "starting",
        database=settings.database_url.set(query={}).render_as_string(hide_password=True),  # no credentials
        webhook_secret=settings.signing_from,
        enforcement=settings.gateway_enforcement,
        polling=settings.polling_enabled,
        webhook_writer=os.environ.get("WEBHOOK_WRITER", settings.webhook_writer),
    )
    if settings.portal_secret is None:  # every webhook sender holds WEBHOOK_SECRET: it must not sign members' links
        structlog.get_logger().warning(
            "portal_secret_missing", hint="set PORTAL_SECRET: portal links are signed with WEBHOOK_SECRET meanwhile"
        )
    if schema_is_current(make_engine(settings.database_url), is_current) is False:
        raise CommandError("the database schema is not up to date: run `creditrelay migrate` first")
    log_gateway_check(settings)
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # every worker writes its metrics here and /metrics adds them up, whichever worker is scraped
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="creditrelay-metrics-")
    uvicorn.run(
        "creditrelay.cli.server:asgi_app",
        factory=True,
        log_config=uvicorn_log_config(),
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        server_header=False,
        **server_options(args.max_connections),
    )
    return 0


def log_gateway_check(settings: Settings) -> None:
    """At start, when a gateway is configured: what `creditrelay gateway check` says, one log line per
    check (a warning for a failed one); serve starts either way (the gateway may come up later)."""
    import structlog

    from creditrelay.cli.gateway import check_gateways, configured

    if not configured(settings):
        return
    log = structlog.get_logger()
    report = check_gateways(settings)
    for check in report.checks:
        (log.info if check.ok else log.warning)("gateway_check", check=check.name, ok=check.ok, detail=check.detail)
    log.info("gateway_checked", ok=report.ok)


def register(commands: Any) -> None:
    command(commands, "migrate", cmd_migrate, "create or upgrade the schema of DATABASE_URL")
    serve = command(commands, "serve", cmd_serve, "run the receiver (webhooks, credit API, admin)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=integer(1, 65535), default=4000, help="port to listen on (default: 4000)")
    serve.add_argument(
        "--workers", type=integer(1, 64), default=1, help="worker processes sharing the port (default: 1)"
    )
    serve.add_argument(
        "--max-connections",
        type=integer(1, 1_000_000),
        default=1000,
        help="open connections per worker past which a new request is answered 503 (default: 1000)",
    )
