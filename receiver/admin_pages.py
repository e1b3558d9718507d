"""`/admin`: the operator's console, rendered on the server (Jinja2, one stylesheet, SVG charts drawn by
pygal, no script, nothing from elsewhere): the overview, users, webhook logs and usage. The pages call
the same billing functions as the admin JSON API. Mounted as its own small application, off the webhook
hot path. What the pages share — sign-in, CSRF, notices — is in ``admin_site``.
"""

import hmac
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from creditrelay.billing import admin
from creditrelay.billing.log_queries import STATUSES
from creditrelay.billing.sessions import LIFETIME, Session, end_session, open_session
from creditrelay.billing.usage_report import MAX_RANGE_DAYS, UsageReport, usage_report
from creditrelay.receiver import admin_logs, admin_users
from creditrelay.receiver.admin_api import AdminService
from creditrelay.receiver.admin_site import (
    COOKIE,
    HEADERS,
    OFF,
    STATIC,
    error_page,
    http_error_page,
    now_of,
    page,
    render,
    service_of,
)
from creditrelay.receiver.charts import STATUS_COLOURS, Frame, Series, bars, horizontal_bars, lines, top_series
from creditrelay.receiver.errors import EXCEPTION_HANDLERS
from creditrelay.receiver.forms import form_of
from creditrelay.receiver.metrics import event_counts
from creditrelay.receiver.params import day_range
from creditrelay.receiver.rate_limit import RateLimiter
from creditrelay.schema.errors import CreditRelayError
from creditrelay.schema.shapes import to_json

LOGINS_PER_MINUTE = 10  # sign-in attempts per client address, per process


async def login(request: Request) -> Response:
    service = service_of(request)
    if service.token is None:
        return render(request, "error.html", 403, message=OFF)
    if request.method == "GET":
        return render(request, "login.html", error="")
    limiter: RateLimiter = request.app.state.logins
    if (wait := limiter.wait_needed(request.client.host if request.client else "")) > 0:
        refused = render(request, "login.html", 429, error=f"Too many sign-in attempts: wait {int(wait) + 1} s")
        refused.headers["Retry-After"] = str(int(wait) + 1)
        return refused
    token = str((await form_of(request)).get("token", ""))
    if not hmac.compare_digest(token.encode(), service.token.encode()):
        return render(request, "login.html", 401, error="Wrong token")
    session = await service.run(lambda c: open_session(c, now_of(service)))
    response = RedirectResponse("/admin/", status_code=303, headers=HEADERS)
    response.set_cookie(
        COOKIE,
        session.token,
        max_age=int(LIFETIME.total_seconds()),
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    service = service_of(request)
    session: Session = request.state.session
    await service.run(lambda c: end_session(c, session.token, now_of(service)))
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="strict")
    return response


async def overview(request: Request) -> Response:
    service = service_of(request)
    stats = await service.read(lambda c: admin.stats(c, now_of(service)))
    since = stats.last_hour.since
    minutes = [(since + timedelta(minutes=i)).strftime("%H:%M") for i in range(len(stats.last_hour.per_minute))]
    frame = Frame(
        "Deliveries per minute, last hour (UTC)",
        "minute (UTC)",
        "deliveries",
        "No deliveries in the last hour. Point your gateway at /api/webhooks/events (docs/webhooks.md).",
        label_every=10,
    )
    series = [Series(s, stats.last_hour.by_minute[s], STATUS_COLOURS[s]) for s in STATUSES]
    chart = await run_in_threadpool(bars, minutes, series, frame)  # drawing is CPU: off the event loop
    counts = await run_in_threadpool(event_counts)
    answered = sum(counts.values())
    rates = {
        "success": (counts.get("charged", 0) + counts.get("duplicate", 0) + counts.get("ignored", 0)) / answered,
        "duplicate": counts.get("duplicate", 0) / answered,
        "answered": int(answered),
    } if answered else None  # fmt: skip
    return render(request, "overview.html", stats=to_json(stats), chart=chart, rates=rates)


async def usage(request: Request) -> Response:
    """Usage over a range of days (``from``, ``to``; the last 30 by default), dated by when it was charged:
    totals, credits by day and model, sold against used, by model, the top spenders."""
    service = service_of(request)
    start, end = day_range(request, now_of(service).date(), 30, MAX_RANGE_DAYS)
    found = await service.read(lambda c: usage_report(c, start, end))
    charts = await run_in_threadpool(usage_charts, found)  # drawing is CPU: off the event loop
    return render(
        request, "usage.html", report=found, start=start.isoformat(), end=end.isoformat(),
        today=now_of(service).date().isoformat(), sold=sum(found.sold), **charts,
    )  # fmt: skip


def usage_charts(found: UsageReport) -> dict[str, Any]:
    labels = [day.strftime("%b %d") for day in found.days]
    every = max(1, len(labels) // 6)
    span = f"{found.days[0]:%b %d} to {found.days[-1]:%b %d, %Y}"
    empty = "No usage charged in these days: link a gateway key to a user and send a usage event."
    daily = Frame(f"Credits charged by day and model, {span} (UTC)", "day (UTC)", "credits", empty, label_every=every)
    flows = Frame(f"Credits sold and used per day, {span} (UTC)", "day (UTC)", "credits", "", label_every=every)
    money = [Series("sold (top-ups, syncs)", found.sold, "#009E73"), Series("used (usage)", found.used, "#D55E00")]
    return {
        "by_day": bars(labels, top_series(found.by_day_and_model, len(labels)), daily),
        "sold_used": lines(labels, money, flows) if any(found.sold) or any(found.used) else None,
        "by_model": horizontal_bars(found.by_model[:20], Frame(f"Credits by model, {span}", "credits", "", empty)),
    }


def admin_pages(service: AdminService) -> Starlette:
    """The /admin application; without ADMIN_TOKEN every page says the panel is disabled."""
    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", page(logout), methods=["POST"]),
        Route("/", page(overview)),
        Route("/users", page(admin_users.users)),
        Route("/users/{user_id}", page(admin_users.user)),
        Route("/users/{user_id:int}/topup", page(admin_users.topup), methods=["POST"]),
        Route("/users/{user_id:int}/grants/void", page(admin_users.void), methods=["POST"]),
        Route("/users/{user_id:int}/correct", page(admin_users.correct), methods=["POST"]),
        Route("/users/{user_id:int}/keys", page(admin_users.add_key), methods=["POST"]),
        Route("/users/{user_id:int}/keys/unlink", page(admin_users.remove_key), methods=["POST"]),
        Route("/users/{user_id:int}/gateway-user", page(admin_users.gateway_user), methods=["POST"]),
        Route("/users/{user_id:int}/access", page(admin_users.access), methods=["POST"]),
        Route("/users/{user_id:int}/portal-link", page(admin_users.portal_link), methods=["POST"]),
        Route("/logs", page(admin_logs.logs)),
        Route("/logs/replay", page(admin_logs.replay_one), methods=["POST"]),
        Route("/logs/replay-key", page(admin_logs.replay_key), methods=["POST"]),
        Route("/logs/replay-filtered", page(admin_logs.replay_filtered), methods=["POST"]),
        Route("/usage", page(usage)),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="admin-static"),
    ]
    handlers = EXCEPTION_HANDLERS | {CreditRelayError: error_page, HTTPException: http_error_page}
    pages = Starlette(routes=routes, exception_handlers=handlers)
    pages.state.admin = service
    pages.state.logins = RateLimiter(LOGINS_PER_MINUTE)
    return pages
