"""The admin pages of users: the list (sorted, filtered, searched, paged), a user's page (keys, charts,
transactions back to the first) and its forms (top-up, correction, link and unlink a key, the gateway
user, suspend or resume at the gateway). Each route parses, calls billing, renders or redirects back with a notice."""

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from creditrelay.billing import access as gateway_access
from creditrelay.billing import portal, user_queries
from creditrelay.billing.accounts import (
    AccountError,
    ReferenceConflict,
    adjust,
    link_key,
    set_gateway_user,
    top_up,
    unlink_key,
)
from creditrelay.billing.grants import GrantError, GrantTerms, UnknownGrant, grants_of, void_grant
from creditrelay.billing.holds import open_holds
from creditrelay.billing.ledger import CreditOutcome, CreditStatus, UnknownUser
from creditrelay.billing.log_queries import LogFilter
from creditrelay.billing.orders import list_orders
from creditrelay.receiver.access_words import FLAG_TEXT, access_flag, access_sentence
from creditrelay.receiver.admin_api import AdminService
from creditrelay.receiver.admin_site import (
    back,
    back_privately,
    link,
    now_of,
    outcomes_text,
    render,
    replay,
    service_of,
)
from creditrelay.receiver.charts import Frame, Series, bars, horizontal_bars, lines, top_series
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.forms import form_of
from creditrelay.receiver.metrics import CREDITS_ADDED, CREDITS_DEDUCTED
from creditrelay.receiver.params import path_int, query_optional_int
from creditrelay.receiver.payments import order_json
from creditrelay.schema.portal_tokens import DEFAULT_DAYS, MAX_DAYS
from creditrelay.schema.shapes import iso, to_json
from creditrelay.schema.wire import plain_int

SHOWS = ("all", "below-zero", "low", "suspended")
SORTS = {"balance": "lowest balance", "-balance": "highest balance", "email": "email", "newest": "newest"}
PAGE = 50
TRANSACTIONS = 50
ORDERS = 20  # the newest orders the user page shows (`order list --user` has them all)


def flags(service: AdminService, balance: int, standing: gateway_access.Standing | None) -> list[str]:
    """A user's flags: below zero, their standing at the gateway (``access_words``), low."""
    low = service.low_at is not None and balance < service.low_at
    access = access_flag(service.enforcement, balance <= service.suspend_at, standing)
    return ["below-zero"] * (balance < 0) + ([access] if access else []) + ["low"] * low


async def users(request: Request) -> Response:
    """Every user, lowest balance first unless sorted otherwise, filtered by ``show`` and searched by ``q``
    (email or name, Telegram id, gateway key), ``PAGE`` at a time."""
    service = service_of(request)
    text = request.query_params.get("q", "").strip()
    show = request.query_params.get("show") or "all"
    sort = request.query_params.get("sort") or "balance"
    if show not in SHOWS:
        raise ApiError(400, f"show: one of {', '.join(SHOWS)}")
    if sort not in SORTS:
        raise ApiError(400, f"sort: one of {', '.join(SORTS)}")
    after = request.query_params.get("after") or None
    below = {"all": None, "below-zero": 0, "suspended": service.suspend_at + 1, "low": service.low_at}[show]
    if show == "low" and below is None:
        found = user_queries.UserPage([], 0, None)
    else:
        query = user_queries.UserQuery(sort=sort, text=text, below=below)
        found = await service.read(lambda c: user_queries.users_page(c, query, PAGE, after))
    standing = await service.read(lambda c: gateway_access.standings(c, [u.id for u in found.users]))
    rows = [to_json(u) | {"flags": flags(service, u.balance, standing.get(u.id))} for u in found.users]
    keep = {"q": text, "show": show if show != "all" else "", "sort": sort if sort != "balance" else ""}
    return render(
        request,
        "users.html",
        query=text,
        users=rows,
        flag_text=FLAG_TEXT,
        line_text="below the line",  # the filter is by balance: what the gateway was told is in the flags
        total=found.total,
        show=show,
        shows=SHOWS,
        sort=sort,
        sorts=SORTS,
        low_at=service.low_at,
        filter_link=lambda **change: link("/admin/users", **(keep | change)),
        next_page=None if found.next is None else link("/admin/users", **keep, after=found.next),
        first_page=link("/admin/users", **keep) if after else None,
    )


def _day_label(day: date) -> str:
    return day.strftime("%b %d")


def activity_charts(service: AdminService, found: user_queries.Activity) -> dict[str, Any]:
    labels = [_day_label(d) for d in found.days]
    every = 5 if len(labels) > 10 else 1
    balance = [Series("balance after the day", found.balances, "#0072B2")]
    if service.suspend_at != 0 or min(found.balances) <= 0:
        balance.append(Series("suspended at or below", [service.suspend_at] * len(labels), "#D55E00"))
    totals = sorted(((m, sum(v)) for m, v in found.by_model.items()), key=lambda p: -p[1])
    no_usage = "No usage in the last 30 days: it appears here once a linked gateway key is used."
    return {
        "balance_chart": lines(
            labels, balance, Frame("Balance at the end of each day (UTC)", "day", "credits", "", label_every=every)
        ),
        "by_day_chart": bars(
            labels,
            top_series(found.by_model, len(labels)),
            Frame("Credits charged by day and model", "day (UTC)", "credits", no_usage, label_every=every),
        ),
        "by_model_chart": horizontal_bars(
            totals[:20], Frame("Credits charged by model, last 30 days", "credits", "", no_usage)
        ),
    }


async def user(request: Request) -> Response:
    service = service_of(request)
    user_id = path_int(request, "user_id")
    before = query_optional_int(request, "before")
    detail = await service.read(lambda c: user_queries.user_detail(c, user_id))
    if detail is None:
        raise ApiError(404, f"No user {user_id}")
    page = await service.read(lambda c: user_queries.transactions(c, user_id, TRANSACTIONS, before))
    access = await service.read(lambda c: gateway_access.access_of(c, user_id))
    granted = await service.read(lambda c: grants_of(c, user_id))
    held = await service.read(lambda c: open_holds(c, user_id, now_of(service)))
    bought = await service.read(lambda c: [order_json(o) for o in list_orders(c, user_id=user_id, limit=ORDERS)])
    charts = {}
    if before is None:  # the charts on the first page only: older pages are for reading the ledger
        found = await service.read(lambda c: user_queries.activity(c, user_id, now_of(service)))
        charts = await run_in_threadpool(activity_charts, service, found)  # drawing is CPU: off the event loop
    here = f"/admin/users/{user_id}"
    below = detail.balance <= service.suspend_at
    targets = detail.gateway_user_id is not None if service.enforcement == "users" else bool(detail.keys)
    return render(
        request,
        "user.html",
        user=to_json(detail),
        flags=flags(service, detail.balance, access.standing),
        flag_text=FLAG_TEXT,
        access=to_json(access),
        access_sentence=access_sentence(
            service.enforcement, below, service.suspend_at, access.standing, has_targets=targets
        ),
        grants=to_json(granted),
        holds=to_json(held),
        orders=bought,
        enforcement=service.enforcement,
        transactions=to_json(page.transactions),
        older=None if page.older is None else link(here, before=page.older),
        newest=here if before is not None else None,
        **charts,
    )


def _form_text(form: Any, name: str) -> str:
    return str(form.get(name, "")).strip()


def _credited(request: Request, here: str, outcome: CreditOutcome, done: str) -> Response:
    if outcome.status is CreditStatus.DUPLICATE:  # nothing new: amber
        notice = f"Already applied (same reference): nothing changed; the balance is {outcome.balance:,}"
        return back(request, here, notice, kind="warning")
    return back(request, here, f"{done}; the balance is now {outcome.balance:,}")


async def topup(request: Request) -> Response:
    service = service_of(request)
    user_id = path_int(request, "user_id")
    here = f"/admin/users/{user_id}"
    form = await form_of(request)
    reference, reason = _form_text(form, "reference"), str(form.get("reason", ""))
    text = _form_text(form, "amount")
    credits = plain_int(text)
    if not credits or not reference:
        return back(request, here, "A top-up needs a positive whole number of credits and a reference", kind="error")
    try:
        terms = _terms(form)
        outcome = await service.run(lambda c: top_up(c, user_id, credits, reference, now_of(service), reason, terms))
    except UnknownUser:
        raise ApiError(404, f"No user {user_id}") from None
    except (AccountError, ReferenceConflict, GrantError) as error:  # a bad amount, reference or term
        return back(request, here, f"Not topped up: {error}", kind="error")
    if outcome.status is CreditStatus.APPLIED:
        CREDITS_ADDED.labels("admin").inc(credits)
    return _credited(request, here, outcome, f"Topped up {credits:,} credits")


def _terms(form: Any) -> GrantTerms:
    """The top-up form's grant terms: expiry (the browser's ``datetime-local``, taken as UTC), priority,
    kind; all empty is a plain top-up."""
    expires, priority = _form_text(form, "expires_at"), _form_text(form, "priority")
    try:
        expires_at = datetime.fromisoformat(expires) if expires else None
    except ValueError:
        raise GrantError("expires-at: a date and time, e.g. 2026-12-31T00:00") from None
    if expires_at is not None and expires_at.tzinfo is not None:
        expires_at = expires_at.astimezone(UTC).replace(tzinfo=None)
    number = plain_int(priority)
    if priority and number is None:
        raise GrantError("priority: a whole number, lower is spent first")
    return GrantTerms(_form_text(form, "kind") or "paid", number, expires_at)


async def void(request: Request) -> Response:
    """End one of the user's live grants now; its remainder leaves as an expiry transaction."""
    service = service_of(request)
    user_id = path_int(request, "user_id")
    here = f"/admin/users/{user_id}"
    form = await form_of(request)
    grant_id, reason = plain_int(_form_text(form, "grant_id")), _form_text(form, "reason") or "voided by admin"
    if grant_id is None:
        raise ApiError(400, "grant_id: a grant's id")
    try:
        ended = await service.run(lambda c: void_grant(c, grant_id, reason, now_of(service)))
    except (UnknownGrant, GrantError) as error:
        return back(request, here, f"Not voided: {error}", kind="error")
    return back(request, here, f"Grant {grant_id} ended ({ended.state})", kind="warning")


async def correct(request: Request) -> Response:
    """A correction takes credits back (a top-up made by mistake, a refund charged back), once per
    reference, with a reason; it may take the balance below zero."""
    service = service_of(request)
    user_id = path_int(request, "user_id")
    here = f"/admin/users/{user_id}"
    form = await form_of(request)
    reference, reason = _form_text(form, "reference"), _form_text(form, "reason")
    text = _form_text(form, "amount").removeprefix("-")
    credits = plain_int(text)
    if not credits or not reference or not reason:
        return back(
            request, here, "A correction needs the credits to take back, a reference and a reason", kind="error"
        )
    try:
        outcome = await service.run(lambda c: adjust(c, user_id, -credits, reference, reason, now_of(service)))
    except UnknownUser:
        raise ApiError(404, f"No user {user_id}") from None
    except (AccountError, ReferenceConflict) as error:
        return back(request, here, f"Not corrected: {error}", kind="error")
    if outcome.status is CreditStatus.APPLIED:
        CREDITS_DEDUCTED.labels("admin").inc(credits)
    return _credited(request, here, outcome, f"Took back {credits:,} credits")


async def add_key(request: Request) -> Response:
    """Link a gateway key to the user, then run that key's failed deliveries again: they bill the user now."""
    service = service_of(request)
    user_id = path_int(request, "user_id")
    here = f"/admin/users/{user_id}"
    key = _form_text(await form_of(request), "remote_key_id")
    if await service.read(lambda c: user_queries.user_detail(c, user_id)) is None:
        raise ApiError(404, f"No user {user_id}")
    try:
        await service.run(lambda c: link_key(c, key, user_id, now_of(service)))
    except (AccountError, IntegrityError) as error:
        return back(request, here, f"Not linked: {error}", kind="error")
    report = await replay(service, LogFilter(key=key))
    ran = f"; its failed events ran again: {outcomes_text(dict(report.outcomes))}" if report.replayed else ""
    more = " (more remain: replay this key from the webhook logs)" if report.more else ""
    return back(request, here, f"Gateway key {key} now bills this user{ran}{more}")


async def gateway_user(request: Request) -> Response:
    """Map the user to a gateway user (an empty field clears it): that gateway user's keys that no `key
    link` names bill this user."""
    service = service_of(request)
    user_id = path_int(request, "user_id")
    here = f"/admin/users/{user_id}"
    text = _form_text(await form_of(request), "gateway_user_id") or None
    try:
        user = await service.run(lambda c: set_gateway_user(c, user_id, text, now_of(service)))
    except AccountError as error:
        if await service.read(lambda c: user_queries.user_detail(c, user_id)) is None:
            raise ApiError(404, f"No user {user_id}") from None
        return back(request, here, f"Gateway user not changed: {error}", kind="error")
    if user.gateway_user_id is None:
        return back(request, here, "No gateway user bills this user now (keys linked before stay linked)")
    return back(request, here, f"Gateway user {user.gateway_user_id}'s keys that no key link names now bill this user")


async def remove_key(request: Request) -> Response:
    """Unlink one of the user's gateway keys: its next usages are logged failed (unknown key) until it is
    linked again; what it was charged stays charged."""
    service = service_of(request)
    user_id = path_int(request, "user_id")
    here = f"/admin/users/{user_id}"
    key = _form_text(await form_of(request), "remote_key_id")

    def work(connection: Connection) -> str:
        detail = user_queries.user_detail(connection, user_id)
        if detail is None:
            raise ApiError(404, f"No user {user_id}")
        if key not in {k.remote_key_id for k in detail.keys}:
            return f"Gateway key {key or '(none)'} does not bill this user: nothing unlinked"
        unlink_key(connection, key)
        return ""

    refused = await service.run(work)
    if refused:
        return back(request, here, refused, kind="error")
    notice = f"Gateway key {key} unlinked: its next usages wait as failed until it is linked again"
    return back(request, here, notice, kind="warning")


async def access(request: Request) -> Response:
    """Suspend now or resume now: the operator's word, pushed like a crossing's and recorded."""
    service = service_of(request)
    user_id = path_int(request, "user_id")
    here = f"/admin/users/{user_id}"
    action = _form_text(await form_of(request), "action")
    if service.enforcement == "off":
        return back(request, here, "Gateway enforcement is off (GATEWAY_ENFORCEMENT)", kind="error")
    if action not in ("suspend", "resume"):
        raise ApiError(400, "action: suspend or resume")
    try:
        await service.run(lambda c: gateway_access.operator_access(c, user_id, action, now_of(service)))
    except UnknownUser:
        raise ApiError(404, f"No user {user_id}") from None
    return back(request, here, f"{action.capitalize()} sent to the gateway's queue")


async def portal_link(request: Request) -> Response:
    """A new link to the member's portal (``days`` from the form, 30 by default), said in the notice; or,
    with ``action=revoke``, every link made so far ended."""
    service = service_of(request)
    user_id = path_int(request, "user_id")
    here = f"/admin/users/{user_id}"
    form = await form_of(request)
    if _form_text(form, "action") == "revoke":
        try:
            await service.run(lambda c: portal.revoke_links(c, user_id))
        except AccountError:
            raise ApiError(404, f"No user {user_id}") from None
        return back(request, here, "Every portal link of this user made so far stops working", kind="warning")
    if not service.portal_keys:
        return back(request, here, "Portal links need PORTAL_SECRET (or WEBHOOK_SECRET) to sign them", kind="error")
    days = plain_int(_form_text(form, "days") or str(DEFAULT_DAYS))
    if days is None or not 1 <= days <= MAX_DAYS:
        return back(request, here, f"A portal link lasts 1 to {MAX_DAYS} days", kind="error")
    key = service.portal_keys[0]
    try:
        made = await service.run(lambda c: portal.issue_link(c, user_id, key, now_of(service), days))
    except AccountError:
        raise ApiError(404, f"No user {user_id}") from None
    where = (service.public_base_url or "") + made.path
    return back_privately(request, here, f"Portal link (until {iso(made.expires_at)}): {where}")
