"""The Starlette application: routes, state, error rendering."""

import time
from collections.abc import Callable

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.routing import Route

from receiver.errors import EXCEPTION_HANDLERS
from receiver.ingest import Ingestor
from receiver.webhooks import WebhookService, health, receive_event
from schema.settings import Settings


def create_app(settings: Settings, engine: Engine, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The receiver for ``settings``, on ``engine`` (already migrated)."""
    routes = [
        Route("/api/webhooks/events", receive_event, methods=["POST"]),
        Route("/api/webhooks/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    app.state.webhooks = WebhookService(
        secrets=settings.require_secrets(),
        body_limit=settings.body_limit,
        ingestor=Ingestor(engine, clock),
        engine=engine,
        clock=clock,
    )
    return app
