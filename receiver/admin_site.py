"""What every admin page shares: the templates, the sign-in guard with its CSRF check, rendering (with the
notice a form left behind), redirects back with a notice, and the small parsers of form and query fields.

Sign-in with ADMIN_TOKEN opens a session kept in the database (``billing.sessions``); the cookie holds
its random token (HttpOnly, SameSite=Strict, Secure when the request came over HTTPS — directly or through
a proxy uvicorn trusts to say so), and sign-out ends it on the server, so a copied cookie stops working
too. Every form carries the session's CSRF token. Every page is sent with a Content-Security-Policy that
allows no script and nothing from elsewhere.
"""

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from creditrelay.billing.admin import Replayed
from creditrelay.billing.log_queries import LogFilter, ReplayReport, replay_failed
from creditrelay.billing.sessions import Session, find_session
from creditrelay.receiver.admin_api import AdminService
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.forms import form_of
from creditrelay.receiver.metrics import ADMIN_REPLAYS, CREDITS_CHARGED
from creditrelay.receiver.params import moment
from creditrelay.schema.database import utc
from creditrelay.schema.errors import CreditRelayError

templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates") / "admin"))


def when(iso: str | None) -> str:
    """An ISO time as the pages show it: ``2026-12-04 10:15:02`` (every time on the pages is UTC)."""
    return "" if not iso else iso[:19].replace("T", " ")


templates.env.filters["when"] = when
STATIC = Path(__file__).with_name("static")
Page = Callable[[Request], Awaitable[Response]]
COOKIE = "creditrelay_admin"
NOTICE_COOKIE = "creditrelay_notice"  # a private notice, for the next page only
NOTICE_KINDS = ("ok", "warning", "error")
# pygal's charts carry their own <style>: inline styles are allowed, scripts never
POLICY = (
    "default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


OFF = "The admin pages are off: set ADMIN_TOKEN and restart"


def service_of(request: Request) -> AdminService:
    service: AdminService = request.app.state.admin
    return service


def now_of(service: AdminService) -> datetime:
    return utc(service.clock())


async def _session(request: Request) -> Session | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    service = service_of(request)
    found: Session | None = await service.read(lambda c: find_session(c, token, now_of(service)))
    return found


def page(handler: Page) -> Page:
    """Sign-in required; POSTs must carry the session's CSRF token."""

    async def guarded(request: Request) -> Response:
        if service_of(request).token is None:
            return render(request, "error.html", 403, message=OFF)
        session = await _session(request)
        if session is None:
            return RedirectResponse("/admin/login", status_code=303)
        request.state.session = session
        if request.method == "POST":
            form = await form_of(request)
            given = str(form.get("csrf", ""))
            if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                return Response(
                    "Form expired or forged (CSRF check failed); reload the page", status_code=403, headers=HEADERS
                )
            if nul := next((name for name, value in form.multi_items() if "\x00" in str(value)), None):
                raise ApiError(400, f"{nul}: a NUL character is not text every database can store")
        return await handler(request)

    return guarded


def _signature(session: Session, kind: str, notice: str) -> str:
    """A notice signed with the session's CSRF secret: only what a form of ours said is shown as said."""
    return hmac.new(session.csrf.encode(), f"{kind}\n{notice}".encode(), hashlib.sha256).hexdigest()[:32]


def _notice(request: Request, session: Session | None) -> tuple[str, str]:
    """The notice a form left in the URL (or, a private one, in its cookie), and its kind, if this session's
    form left it (a link someone made up shows none)."""
    params: Mapping[str, str] = request.query_params
    if "notice" not in params and (cookie := request.cookies.get(NOTICE_COOKIE)):
        params = dict(parse_qsl(cookie))
    notice, kind, signature = params.get("notice", ""), params.get("kind", "ok"), params.get("said", "")
    if not notice or session is None or kind not in NOTICE_KINDS:
        return "", "ok"
    if not hmac.compare_digest(signature.encode(), _signature(session, kind, notice).encode()):
        return "", "ok"
    return notice, kind


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    session: Session | None = getattr(request.state, "session", None)
    notice, kind = _notice(request, session)
    context = {
        "csrf": session.csrf if session else "",
        "notice": notice,
        "notice_kind": kind,
        "path": request.url.path,
        **context,
    }
    response = templates.TemplateResponse(request, name, context, status_code=status_code, headers=HEADERS)
    if NOTICE_COOKIE in request.cookies:  # read once
        response.delete_cookie(NOTICE_COOKIE, path="/admin")
    return response


async def error_page(request: Request, exc: Exception) -> Response:
    """A refusal on a page, as a page (the API answers the same refusals in JSON)."""
    assert isinstance(exc, CreditRelayError)
    return render(request, "error.html", exc.status_code, message=exc.public_message)


async def http_error_page(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such page, a method a page does not take), as a page."""
    assert isinstance(exc, HTTPException)
    return render(request, "error.html", exc.status_code, message=exc.detail)


def back(request: Request, path: str, notice: str, *, kind: str = "ok", **query: Any) -> Response:
    """To ``path`` (with ``query``), saying ``notice`` in a box of ``kind`` (ok, warning or error)."""
    given = {k: v for k, v in query.items() if v not in (None, "")}
    return RedirectResponse(f"{path}?{urlencode(given | _said(request, notice, kind))}", status_code=303)


def back_privately(request: Request, path: str, notice: str) -> Response:
    """``back``, for a notice that holds a credential (a member's portal link): it travels in a cookie the
    next page reads once, never in a URL that browser history or a proxy's log would keep."""
    response = RedirectResponse(path, status_code=303)
    response.set_cookie(NOTICE_COOKIE, urlencode(_said(request, notice, "ok")), max_age=60, path="/admin",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")  # fmt: skip
    return response


def _said(request: Request, notice: str, kind: str) -> dict[str, str]:
    session: Session = request.state.session
    return {"notice": notice, "kind": kind, "said": _signature(session, kind, notice)}


def local_time(fields: Mapping[str, Any], name: str) -> datetime | None:
    """A datetime-local form field (UTC): None when left empty, a 400 naming it when not a time."""
    text = fields.get(name)
    return moment(str(text), name) if text else None


def link(path: str, **query: Any) -> str:
    """``path`` with the query fields that have a value."""
    given = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{path}?{urlencode(given)}" if given else path


def outcomes_text(counts: dict[str, int]) -> str:
    """``{"charged": 3, "unbillable": 1}`` as "3 charged, 1 still unbillable"."""
    words = {"unbillable": "still unbillable", "duplicate": "already charged"}
    return ", ".join(f"{count} {words.get(status, status)}" for status, count in sorted(counts.items()))


async def replay(service: AdminService, wanted: LogFilter) -> ReplayReport:
    """The failed deliveries ``wanted`` selects, run again a chunk per transaction (off the event loop),
    their outcomes counted."""
    report = await run_in_threadpool(lambda: replay_failed(service.engine, wanted, now_of(service)))
    for outcome, count in report.outcomes.items():
        ADMIN_REPLAYS.labels(outcome).inc(count)
    if report.credits:
        CREDITS_CHARGED.labels("replay").inc(report.credits)
    return report


def count_replayed(replayed: Replayed) -> None:
    """One delivery run again from the pages or the API: its outcome, and what it charged."""
    ADMIN_REPLAYS.labels(replayed.outcome.status.value).inc()
    if replayed.credits:
        CREDITS_CHARGED.labels("replay").inc(replayed.credits)
