"""`/admin`: the operator's pages, rendered on the server (Jinja2, inline SVG charts, no script, no CDN).

Sign-in with ADMIN_TOKEN opens a session kept in the database (``billing.sessions``); the cookie holds
its random token (HttpOnly, SameSite=Strict, Secure when the request came over HTTPS — directly or through
a proxy uvicorn trusts to say so), and sign-out ends it on the server, so a copied cookie stops working
too. Every form carries the session's CSRF token. The pages call the same billing functions as the admin
JSON API. Mounted as its own small application, off the webhook hot path.
"""

import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.exc import IntegrityError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from creditrelay.billing import admin, enforcement
from creditrelay.billing.accounts import AccountError, link_key, top_up
from creditrelay.billing.ledger import CreditStatus, UnknownUser
from creditrelay.billing.sessions import LIFETIME, Session, end_session, find_session, open_session
from creditrelay.receiver.admin_api import AdminService
from creditrelay.receiver.charts import bar_chart
from creditrelay.receiver.errors import EXCEPTION_HANDLERS, ApiError
from creditrelay.receiver.metrics import event_counts
from creditrelay.receiver.params import path_int, query_moment, query_optional_int
from creditrelay.receiver.shapes import to_json
from creditrelay.schema.database import utc
from creditrelay.schema.errors import CreditRelayError
from creditrelay.schema.wire import plain_int

templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates") / "admin"))
Page = Callable[[Request], Awaitable[Response]]


def _service(request: Request) -> AdminService:
    service: AdminService = request.app.state.admin
    return service


COOKIE = "creditrelay_admin"


async def _session(request: Request) -> Session | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    service = _service(request)
    found: Session | None = await service.read(lambda c: find_session(c, token, utc(service.clock())))
    return found


def _page(handler: Page) -> Page:
    """Sign-in required; POSTs must carry the session's CSRF token."""

    async def guarded(request: Request) -> Response:
        session = await _session(request)
        if session is None:
            return RedirectResponse("/admin/login", status_code=303)
        request.state.session = session
        if request.method == "POST":
            form = await request.form()
            given = str(form.get("csrf", ""))
            if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                return Response("Form expired or forged (CSRF check failed); reload the page", status_code=403)
        return await handler(request)

    return guarded


def _render(request: Request, name: str, **context: Any) -> Response:
    session: Session | None = getattr(request.state, "session", None)
    context |= {
        "csrf": session.csrf if session else "",
        "notice": request.query_params.get("notice", ""),
        "notice_kind": "error" if request.query_params.get("kind") == "error" else "ok",
    }
    return templates.TemplateResponse(request, name, context)


async def _error_page(request: Request, exc: Exception) -> Response:
    """A refusal on a page, as a page (the API answers the same refusals in JSON)."""
    assert isinstance(exc, CreditRelayError)
    session: Session | None = getattr(request.state, "session", None)
    context = {"message": exc.public_message, "csrf": session.csrf if session else "", "notice": ""}
    return templates.TemplateResponse(request, "error.html", context, status_code=exc.status_code)


async def login(request: Request) -> Response:
    service = _service(request)
    if request.method == "GET":
        return _render(request, "login.html", error="")
    token = str((await request.form()).get("token", ""))
    if service.token is None or not hmac.compare_digest(token.encode(), service.token.encode()):
        return templates.TemplateResponse(
            request, "login.html", {"error": "Wrong token", "csrf": "", "notice": ""}, status_code=401
        )
    session = await service.run(lambda c: open_session(c, utc(service.clock())))
    response = RedirectResponse("/admin/", status_code=303)
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
    service = _service(request)
    session: Session = request.state.session
    await service.run(lambda c: end_session(c, session.token, utc(service.clock())))
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="strict")
    return response


async def overview(request: Request) -> Response:
    service = _service(request)
    stats = await service.read(lambda c: admin.stats(c, utc(service.clock())))
    since = stats.last_hour.since
    per_minute = [
        ((since + timedelta(minutes=i)).strftime("%H:%M"), n) for i, n in enumerate(stats.last_hour.per_minute)
    ]
    chart = bar_chart(per_minute, title="deliveries per minute, last hour")
    counts = await run_in_threadpool(event_counts)
    answered = sum(counts.values())
    rates = {
        "success": (counts.get("charged", 0) + counts.get("duplicate", 0) + counts.get("ignored", 0)) / answered,
        "duplicate": counts.get("duplicate", 0) / answered,
        "answered": int(answered),
    } if answered else None  # fmt: skip
    return _render(request, "overview.html", stats=to_json(stats), chart=chart, rates=rates)


SHOWS = ("all", "suspended", "low")


def _flags(service: AdminService, balance: int) -> list[str]:
    low = service.low_at is not None and balance < service.low_at
    return ["suspended"] * (balance <= service.suspend_at) + ["low"] * low


async def users(request: Request) -> Response:
    """A search, or every user lowest balance first, flagged suspended or low, filtered by ``show``."""
    service = _service(request)
    query = request.query_params.get("q", "").strip()
    show = request.query_params.get("show") or "all"
    if show not in SHOWS:
        raise ApiError(400, f"show: one of {', '.join(SHOWS)}")
    if query:
        found = await service.read(lambda c: admin.search_users(c, query, 50))
    else:
        below = {"all": None, "suspended": service.suspend_at + 1, "low": service.low_at}[show]
        found = [] if show == "low" and below is None else await service.read(lambda c: admin.by_balance(c, 200, below))
    rows = [to_json(u) | {"flags": _flags(service, u.balance)} for u in found]
    return _render(request, "users.html", query=query, users=rows, show=show, shows=SHOWS, low_at=service.low_at)


async def user(request: Request) -> Response:
    service = _service(request)
    user_id = path_int(request, "user_id")
    detail = await service.read(lambda c: admin.user_detail(c, user_id, 100))
    if detail is None:
        return Response("No such user", status_code=404)
    access = await service.read(lambda c: enforcement.access_of(c, user_id))
    return _render(
        request,
        "user.html",
        user=to_json(detail),
        flags=_flags(service, detail.balance),
        access=to_json(access),
        enforcement=service.enforcement,
    )


async def access(request: Request) -> Response:
    """Suspend now or resume now: the operator's word, pushed like a crossing's and recorded."""
    service = _service(request)
    user_id = path_int(request, "user_id")
    action = str((await request.form()).get("action", ""))
    if service.enforcement == "off":
        return _back(f"/admin/users/{user_id}", "Gateway enforcement is off (GATEWAY_ENFORCEMENT)", error=True)
    if action not in ("suspend", "resume"):
        raise ApiError(400, "action: suspend or resume")
    try:
        await service.run(lambda c: enforcement.operator_access(c, user_id, action, utc(service.clock())))
    except UnknownUser:
        return Response("No such user", status_code=404)
    return _back(f"/admin/users/{user_id}", f"{action.capitalize()} sent to the gateway's queue")


def _back(path: str, notice: str, *, error: bool = False) -> Response:
    query = {"notice": notice} | ({"kind": "error"} if error else {})
    return RedirectResponse(f"{path}?{urlencode(query)}", status_code=303)


async def topup(request: Request) -> Response:
    service = _service(request)
    user_id = path_int(request, "user_id")
    form = await request.form()
    amount, reference = str(form.get("amount", "")).strip(), str(form.get("reference", "")).strip()
    reason, now = str(form.get("reason", "")), utc(service.clock())
    credits = plain_int(amount)
    if not credits:
        return _back(f"/admin/users/{user_id}", "A top-up needs a positive amount and a reference", error=True)
    try:
        outcome = await service.run(lambda c: top_up(c, user_id, credits, reference, now, reason))
    except UnknownUser:
        return Response("No such user", status_code=404)
    except AccountError as error:  # a bad amount or reference, or one used for another top-up
        return _back(f"/admin/users/{user_id}", f"Not topped up: {error}", error=True)
    done = "Already applied (same reference)" if outcome.status is CreditStatus.DUPLICATE else "Topped up"
    return _back(f"/admin/users/{user_id}", done)


async def add_key(request: Request) -> Response:
    service = _service(request)
    user_id = path_int(request, "user_id")
    key = str((await request.form()).get("remote_key_id", ""))
    try:
        await service.run(lambda c: link_key(c, key, user_id, utc(service.clock())))
    except (AccountError, IntegrityError) as error:
        return _back(f"/admin/users/{user_id}", f"Not linked: {error}", error=True)
    counts = await service.run(lambda c: admin.replay_key(c, key.strip(), utc(service.clock()), service.tolerance))
    return _back(f"/admin/users/{user_id}", f"Gateway key {key} now bills this user{_replayed(counts)}")


def _replayed(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    done = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    return f"; its failed events run again: {done}"


PAGE = 200


async def logs(request: Request) -> Response:
    """Deliveries newest first (failed first on the first unfiltered page), ``PAGE`` at a time with an
    "older" link (keyset by id), each with its key, user, model and cost read from its payload."""
    service = _service(request)
    status = request.query_params.get("status") or None
    if status not in (None, *admin.STATUSES):
        raise ApiError(400, f"status: one of {', '.join(admin.STATUSES)}")
    since, until = _local_time(request, "since"), _local_time(request, "until")
    before = query_optional_int(request, "before")
    rows = await service.read(
        lambda c: admin.list_webhook_logs(c, status=status, since=since, until=until, limit=PAGE, before=before)
    )
    older = rows[-1].id if len(rows) == PAGE else None
    if status is None and before is None:
        rows.sort(key=lambda r: r.status != "failed")  # failed first, each part newest first
    usages = await service.read(lambda c: admin.log_usages(c, rows))
    shown = [to_json(r) | to_json(usages.get(r.id, admin.LogUsage())) for r in rows]
    keep = {k: v for k, v in request.query_params.items() if k in ("status", "since", "until") and v}
    return _render(
        request,
        "logs.html",
        logs=shown,
        status=status or "",
        since=request.query_params.get("since", ""),
        until=request.query_params.get("until", ""),
        older=None if older is None else f"/admin/logs?{urlencode(keep | {'before': older})}",
    )


async def replay_key(request: Request) -> Response:
    """Every failed event of one gateway key, run again (after its key was linked)."""
    service = _service(request)
    key = str((await request.form()).get("remote_key_id", "")).strip()
    if not key:
        return _back("/admin/logs", "Replay by key needs a gateway key id", error=True)
    counts = await service.run(lambda c: admin.replay_key(c, key, utc(service.clock()), service.tolerance))
    if not counts:
        return _back("/admin/logs", f"No failed events of gateway key {key}", error=True)
    return _back("/admin/logs", f"Gateway key {key}{_replayed(counts)}")


def _local_time(request: Request, name: str) -> datetime | None:
    """A datetime-local form field (UTC): None when left empty, a 400 naming it when not a time."""
    return query_moment(request, name) if request.query_params.get(name) else None


async def replay(request: Request) -> Response:
    """The event id comes in the form, not the path: any id works, "." and ".." included."""
    service = _service(request)
    event_id = str((await request.form()).get("event_id", ""))
    outcome = await service.run(lambda c: admin.replay(c, event_id, utc(service.clock()), service.tolerance))
    if outcome is None:
        return _back("/admin/logs", "No such delivery", error=True)
    return _back("/admin/logs", f"{event_id}: {outcome.status.value}")


async def usage(request: Request) -> Response:
    service = _service(request)
    since = utc(service.clock()) - timedelta(days=30)
    by_model = await service.read(lambda c: admin.usage_by_model(c, since))
    by_day = await service.read(lambda c: admin.usage_by_day(c, since))
    return _render(
        request,
        "usage.html",
        by_model=bar_chart(by_model[:20], title="credits by model, last 30 days"),
        by_day=bar_chart(by_day, title="credits by day, last 30 days"),
    )


def admin_pages(service: AdminService) -> Starlette:
    """The /admin application; without ADMIN_TOKEN every page says the panel is disabled."""
    routes = [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", _page(logout), methods=["POST"]),
        Route("/", _page(overview)),
        Route("/users", _page(users)),
        Route("/users/{user_id}", _page(user)),
        Route("/users/{user_id:int}/topup", _page(topup), methods=["POST"]),
        Route("/users/{user_id:int}/keys", _page(add_key), methods=["POST"]),
        Route("/users/{user_id:int}/access", _page(access), methods=["POST"]),
        Route("/logs", _page(logs)),
        Route("/logs/replay", _page(replay), methods=["POST"]),
        Route("/logs/replay-key", _page(replay_key), methods=["POST"]),
        Route("/usage", _page(usage)),
    ]
    pages = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS | {CreditRelayError: _error_page})
    pages.state.admin = service
    return pages
