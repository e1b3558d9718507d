"""``/portal/<token>``: a member's own page, opened by the link the operator sent them (docs/portal.md) —
no sign-in, the console's stylesheet, no script, the console's Content-Security-Policy. Balance and
standing, usage by the day it was charged and by model over a chosen range, transactions newest first
back to the first, monthly statements as CSV. A link that does not work is a 404 that says nothing of
why. Jinja2 escapes every string a member (or their gateway) controls."""

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from creditrelay.billing import portal, user_queries
from creditrelay.billing.statement_files import user_csv
from creditrelay.billing.statements import month_of, months_between, parse_month
from creditrelay.receiver.admin_site import HEADERS, STATIC, link, when
from creditrelay.receiver.charts import Frame, bars, horizontal_bars, top_series
from creditrelay.receiver.errors import EXCEPTION_HANDLERS
from creditrelay.receiver.params import day_range, query_optional_int
from creditrelay.receiver.payments import PaymentService, buy_form, history, package_rows, payments_of
from creditrelay.receiver.portal_api import DEFAULT_RANGE_DAYS, TRANSACTIONS, PortalService, service_of
from creditrelay.schema.errors import CreditRelayError
from creditrelay.schema.shapes import to_json
from creditrelay.schema.transactions import read_stream

templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates") / "portal"))
templates.env.filters["when"] = when
PAGE_HEADERS = HEADERS | {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}


def _render(
    request: Request, name: str, status_code: int = 200, headers: dict[str, str] = PAGE_HEADERS, **context: Any
) -> Response:
    return templates.TemplateResponse(request, name, context, status_code=status_code, headers=headers)


def usage_charts(found: portal.Usage) -> dict[str, Any]:
    """The range's credits by day (stacked by model) and by model."""
    labels = [day.strftime("%b %d") for day in (d for d, _ in found.by_day)]
    names = [model for model, _, _ in found.by_model]
    by_model = {name: [models.get(name, 0) for _, models in found.by_day] for name in names}
    every = max(1, len(labels) // 6)
    empty = "No usage charged in these days."
    span = f"{found.start:%b %d} to {found.end:%b %d, %Y}"
    return {
        "by_day_chart": bars(
            labels, top_series(by_model, len(labels)),
            Frame(f"Credits charged by day, {span} (UTC)", "day (UTC)", "credits", empty, label_every=every),
        ),
        "by_model_chart": horizontal_bars(
            [(model, credits) for model, credits, _ in found.by_model[:20]],
            Frame(f"Credits by model, {span}", "credits", "", empty),
        ),
    }  # fmt: skip


async def page(request: Request) -> Response:
    service = service_of(request)
    token = str(request.path_params["token"])
    user_id = await service.member(token)
    today = service.today()
    start, end = day_range(request, today, DEFAULT_RANGE_DAYS, portal.MAX_RANGE_DAYS)
    before = query_optional_int(request, "before")
    account = await service.read(lambda c: portal.account(c, user_id))
    found = await service.read(lambda c: portal.usage(c, user_id, start, end))
    transactions = await service.read(lambda c: user_queries.transactions(c, user_id, TRANSACTIONS, before))
    orders = await service.read(lambda c: history(c, user_id))
    shop = payments_of(request)
    charts = await run_in_threadpool(usage_charts, found)  # drawing is CPU: off the event loop
    here = f"/portal/{token}"
    keep = {"from": request.query_params.get("from"), "to": request.query_params.get("to")}
    policy = shop.page_policy(PAGE_HEADERS["Content-Security-Policy"])  # the Buy form goes to the provider
    return _render(
        request,
        "portal.html",
        headers=PAGE_HEADERS | {"Content-Security-Policy": policy},
        here=here,
        account=to_json(account),
        start=start.isoformat(),
        end=end.isoformat(),
        today=today.isoformat(),
        usage=found,
        transactions=to_json(transactions.transactions),
        older=link(here, **keep, before=transactions.older) if transactions.older is not None else None,
        newest=link(here, **keep) if before is not None else None,
        months=months_between(account.first_month, today),
        packages=package_rows(shop.packages) if shop.providers else [],
        providers=shop.providers,
        orders=orders,
        **charts,
    )


async def statement(request: Request) -> Response:
    """The member's month as CSV, streamed from one read-only transaction."""
    service = service_of(request)
    user_id = await service.member(str(request.path_params["token"]))
    given = request.query_params.get("month") or f"{service.today():%Y-%m}"
    start, _ = parse_month(given)  # a 400 naming month, before anything is streamed
    text = f"{start:%Y-%m}"  # as parsed: what was sent around it goes nowhere near the file name

    def lines() -> Any:
        with read_stream(service.engine) as connection:
            yield from user_csv(connection, user_id, month_of(connection, text))

    name = f"statement-{text}.csv"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers=headers)


async def error_page(request: Request, exc: Exception) -> Response:
    """A refusal as a page: a link that does not work says only that."""
    status = exc.status_code if isinstance(exc, CreditRelayError | HTTPException) else 500
    message = exc.public_message if isinstance(exc, CreditRelayError) else str(getattr(exc, "detail", ""))
    if status == 404:
        message = "This link does not work. It may have expired or been replaced: ask for a new one."
    return _render(request, "error.html", status, message=message)


def portal_pages(service: PortalService, payments: PaymentService) -> Starlette:
    routes = [
        Mount("/static", StaticFiles(directory=str(STATIC)), name="portal-static"),
        Route("/{token}", page, methods=["GET"]),
        Route("/{token}/statement.csv", statement, methods=["GET"]),
        Route("/{token}/buy", buy_form, methods=["POST"]),
    ]
    handlers = EXCEPTION_HANDLERS | {CreditRelayError: error_page, HTTPException: error_page}
    pages = Starlette(routes=routes, exception_handlers=handlers)
    pages.state.portal = service
    pages.state.payments = payments
    return pages
