"""The Starlette application: routes, state, error rendering."""

import time
from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from creditrelay.billing.polling import Poller
from creditrelay.receiver import (
    admin_api,
    allowance,
    batches,
    credit_holds,
    credits,
    holds,
    openapi,
    operator_api,
    payments,
    portal_api,
    stripe_webhook,
)
from creditrelay.receiver.admin_pages import admin_pages
from creditrelay.receiver.background import Worker, background_lifespan, polling
from creditrelay.receiver.bodies import BodyDeadline
from creditrelay.receiver.errors import EXCEPTION_HANDLERS, error_response
from creditrelay.receiver.ingest import Ingestor
from creditrelay.receiver.metrics import ledger_registry
from creditrelay.receiver.portal_pages import portal_pages
from creditrelay.receiver.rate_limit import RateLimiter
from creditrelay.receiver.stripe_checkout import StripeSettings
from creditrelay.receiver.webhooks import WebhookService, health, receive_event
from creditrelay.receiver.writers import Writer
from creditrelay.settings import Settings

EVENTS_PATH = "/api/webhooks/events"


class ReceiverApp(Starlette):
    """Starlette with one deliberate bypass: ``POST /api/webhooks/events``, the hot path, goes straight to
    its endpoint instead of through the middleware stack and the router (they cost a third of the bare
    ceiling's time per request). Its errors are rendered by the app's own exception handlers, and the body
    deadline applies to it as to every request; everything else, and this path under any other method, is
    Starlette's as usual.

    So that a middleware added later cannot silently skip the busiest route, this app takes none: what
    every request needs goes into ``__call__`` beside the body deadline, where the bypass sees it too.
    """

    body_deadline: BodyDeadline | None = None

    def add_middleware(self, *_args: object, **_kwargs: object) -> None:
        raise TypeError(
            f"ReceiverApp takes no middleware: POST {EVENTS_PATH} bypasses the middleware stack (the hot path);"
            " put what every request needs in ReceiverApp.__call__, where the bypass sees it too"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (where := _nul_in_url(scope)) is not None:
            # no name or value of ours holds one, and PostgreSQL cannot store one: refused before any route
            message = f"{where}: a NUL character (%00) is not text every database can store"
            await error_response(400, message)(scope, receive, send)
            return
        if scope["type"] == "http" and self.body_deadline is not None:
            receive = self.body_deadline.bound(receive)
        if scope["type"] != "http" or scope["path"] != EVENTS_PATH or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        try:
            await receive_event(scope, receive, send)
        except Exception as error:  # noqa: BLE001 - rendered by the app's handlers, as Starlette's stack would
            handler = next(k for k in type(error).__mro__ if k in self.exception_handlers)  # Exception is there
            response = await self.exception_handlers[handler](Request(scope, receive), error)
            await response(scope, receive, send)


def _nul_in_url(scope: Scope) -> str | None:
    """Where a request's URL holds a NUL character: "path", or the query parameter's name."""
    if "\x00" in scope["path"]:
        return "path"
    query = scope.get("query_string", b"")
    if b"%00" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "%00") or "query"
    return None


def create_app(
    settings: Settings,
    engine: Engine,
    *,
    clock: Callable[[], float] = time.time,
    poller: Poller | None = None,
    workers: Sequence[Worker] = (),
    stripe_api_base: str | None = None,
    writer: Writer | None = None,
) -> Starlette:
    """The receiver for ``settings``, on ``engine`` (already migrated); with ``poller`` and ``POLL_INTERVAL``
    it also polls new-api in the background, and runs ``workers`` beside (see ``background``).
    ``stripe_api_base``: a stand-in for Stripe's API (a test's fake, stripe-mock); ``writer``: where the
    webhook batches are applied (by default on the writer threads)."""
    admin_service = admin_api.AdminService(
        engine,
        settings.admin_token,
        clock,
        suspend_at=settings.suspend_at_balance,
        low_at=settings.low_balance_at,
        enforcement=settings.gateway_enforcement,
        portal_keys=settings.portal_keys,
        public_base_url=settings.public_base_url,
    )
    portal_service = portal_api.PortalService(engine, settings.portal_keys, clock)
    epay = (
        payments.EpaySettings(settings.epay_url, settings.epay_pid, settings.epay_key)
        if settings.epay_url and settings.epay_pid and settings.epay_key
        else None
    )
    stripe = (
        StripeSettings(settings.stripe_webhook_secret, settings.stripe_api_key, stripe_api_base)
        if settings.stripe_webhook_secret or settings.stripe_api_key
        else None
    )
    payment_service = payments.PaymentService(
        engine, clock, settings.credit_packages, settings.public_base_url, epay, stripe
    )
    routes = [
        Route(EVENTS_PATH, receive_event, methods=["POST"]),
        Route("/api/webhooks/batch", batches.receive_batch, methods=["POST"]),
        Route("/api/webhooks/health", health, methods=["GET"]),
        Route("/api/credits/sync", credits.counted("sync", credits.sync), methods=["POST"]),
        Route("/api/credits/batch", credits.counted("batch", credits.batch), methods=["POST"]),
        Route("/api/credits/balance/{telegram_id}", credits.counted("balance", credits.balance), methods=["GET"]),
        Route("/api/credits/records/{telegram_id}", credits.counted("records", credits.records), methods=["GET"]),
        Route("/api/credits/balance", credits.counted("balance", credits.balance), methods=["GET"]),
        Route("/api/credits/records", credits.counted("records", credits.records), methods=["GET"]),
        Route("/api/credits/holds", credits.counted("hold", credit_holds.hold), methods=["POST"]),
        Route(
            "/api/credits/holds/{hold_id}/capture", credits.counted("capture", credit_holds.capture), methods=["POST"]
        ),
        Route("/api/credits/holds/{hold_id}/void", credits.counted("void", credit_holds.void), methods=["POST"]),
        Route("/api/info", operator_api.info, methods=["GET"]),
        Route("/api/gateway/allowance/{remote_key_id:path}", allowance.allowance, methods=["GET"]),
        Route("/api/gateway/holds", holds.place, methods=["POST"]),
        Route("/api/gateway/holds/{hold_id}", holds.void, methods=["DELETE"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/docs", openapi.docs, methods=["GET"]),
        Route("/docs/static/{name}", openapi.docs_file, methods=["GET"]),
        Mount("/admin", app=admin_pages(admin_service)),
        Mount("/portal", app=portal_pages(portal_service, payment_service)),
        Route("/api/portal/account", portal_api.account, methods=["GET"]),
        Route("/api/portal/usage", portal_api.usage, methods=["GET"]),
        Route("/api/portal/transactions", portal_api.transactions, methods=["GET"]),
        Route("/api/portal/orders", payments.create, methods=["POST"]),
        Route(payments.NOTIFY_PATH, payments.epay_notify, methods=["GET", "POST"]),
        Route(stripe_webhook.PATH, stripe_webhook.stripe_event, methods=["POST"]),
        Route(payments.RETURN_PATH, payments.returned, methods=["GET"]),
        Route("/api/admin/users", admin_api.users, methods=["GET"]),
        Route("/api/admin/users/{user_id}", admin_api.user, methods=["GET"]),
        Route("/api/admin/users/{user_id}/topup", admin_api.topup, methods=["POST"]),
        Route("/api/admin/webhook-logs", admin_api.webhook_logs, methods=["GET"]),
        Route("/api/admin/webhook-logs/replay", admin_api.replay, methods=["POST"]),
        Route("/api/admin/webhook-logs/{event_id:path}/replay", admin_api.replay, methods=["POST"]),
        Route("/api/admin/stats", admin_api.stats, methods=["GET"]),
        Route("/metrics", operator_api.metrics, methods=["GET"]),
    ]
    background = list(workers)
    if poller is not None and settings.poll_interval:
        background.append(polling(poller, settings.poll_interval))
    lifespan = background_lifespan(background) if background else None
    app = ReceiverApp(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.body_deadline = BodyDeadline(settings.body_timeout)
    app.state.webhooks = WebhookService(
        secrets=settings.require_secrets(),
        body_limit=settings.body_limit,
        ingestor=Ingestor(engine, clock, writer=writer),
        engine=engine,
        clock=clock,
    )
    app.state.admin = admin_service
    app.state.portal = portal_service
    app.state.payments = payment_service
    app.state.allowance = allowance.AllowanceService(engine, settings.gateway_token, settings.suspend_at_balance, clock)
    app.state.operator = operator_api.OperatorService(
        database=engine.dialect.name,
        polling=poller is not None and bool(settings.poll_interval),  # what runs: serve polls with POLL_INTERVAL
        admin=settings.admin_token is not None,
        rate_limit=settings.credit_rate_limit,
        ledger=ledger_registry(engine, clock),
        enforcement=settings.gateway_enforcement,
        alerts=settings.alert_webhook_url is not None,
        metrics_token=settings.metrics_token,
    )
    limiter = RateLimiter(settings.credit_rate_limit) if settings.credit_rate_limit else None
    app.state.credits = credits.CreditService(
        engine, settings.credit_sync_secret, clock, limiter, settings.suspend_at_balance
    )
    return app
