"""The admin pages of webhook deliveries: the logs filtered by status, time, gateway key, user and event id,
paged to the first delivery and back; and replays — one event, every failed event of a key, or every
failed event the filter shows."""

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from creditrelay.billing import admin
from creditrelay.billing.accounts import AccountError, find_user
from creditrelay.billing.log_queries import (
    STATUSES,
    LogFilter,
    LogUsage,
    ReplayReport,
    failed_count,
    find_logs,
    log_usages,
)
from creditrelay.receiver.admin_api import AdminService
from creditrelay.receiver.admin_site import (
    back,
    count_replayed,
    link,
    local_time,
    now_of,
    outcomes_text,
    render,
    replay,
    service_of,
)
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.forms import form_of
from creditrelay.schema.shapes import to_json
from creditrelay.schema.wire import plain_int

PAGE = 200
FIELDS = ("status", "since", "until", "key", "user", "event")


async def _filter(service: AdminService, fields: Mapping[str, Any]) -> LogFilter:
    """The filter the fields (of the query, or of a replay form) ask for; a value it cannot use is a 400
    naming the field."""
    status = fields.get("status") or None
    if status not in (None, *STATUSES):
        raise ApiError(400, f"status: one of {', '.join(STATUSES)}")
    user_id = None
    if user := str(fields.get("user") or "").strip():
        try:
            user_id = (await service.read(lambda c: find_user(c, user))).id
        except AccountError:
            raise ApiError(400, f"user: no user {user!r} (an email or a user id)") from None
    key = str(fields.get("key") or "").strip() or None
    event = str(fields.get("event") or "") or None
    since, until = local_time(fields, "since"), local_time(fields, "until")
    return LogFilter(status, since, until, key=key, user_id=user_id, event_id=event)


def _cursor(fields: Mapping[str, Any], name: str) -> int | None:
    """A page's cursor: the id of the row it continues from (``after=0``: from the first delivery)."""
    text = fields.get(name)
    if text is None:
        return None
    value = plain_int(str(text))
    if value is None:
        raise ApiError(400, f"{name}: the id of a delivery (follow the list's own links)")
    return value


def _kept(fields: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(fields.get(name)) for name in FIELDS if fields.get(name)}


async def logs(request: Request) -> Response:
    """Deliveries newest first, ``PAGE`` at a time, with links to older and newer pages (keyset by id),
    each with its key, the user the key bills, model and cost."""
    service = service_of(request)
    params = request.query_params
    wanted = await _filter(service, params)
    before, after = _cursor(params, "before"), _cursor(params, "after")
    page = await service.read(lambda c: find_logs(c, wanted, PAGE, before=before, after=after))
    usages = await service.read(lambda c: log_usages(c, page.logs))
    failed = await service.read(failed_count)
    kept = _kept(params)
    filtered = any(kept.get(name) for name in FIELDS)
    return render(
        request,
        "logs.html",
        logs=[to_json(r) | to_json(usages.get(r.id, LogUsage())) for r in page.logs],
        fields={name: params.get(name, "") for name in FIELDS},
        statuses=STATUSES,
        filtered=filtered,
        failed_total=failed,
        kept=kept,
        older=None if page.older is None else link("/admin/logs", **kept, before=page.older),
        newer=None if page.newer is None else link("/admin/logs", **kept, after=page.newer),
        newest=link("/admin/logs", **kept) if before is not None or after is not None else None,
        oldest=link("/admin/logs", **kept, after=0) if page.older is not None else None,
    )


def _said(report: ReplayReport, what: str) -> str:
    if not report.replayed:
        return f"No failed events {what}"
    more = "; more remain: press again" if report.more else ""
    return f"{report.replayed} failed events {what} ran again: {outcomes_text(dict(report.outcomes))}{more}"


def _kind(report: ReplayReport) -> str:
    """Green when all were charged (or had been), amber when some stay failed, red when none ran."""
    if not report.replayed:
        return "error"
    return "warning" if report.outcomes.get("unbillable") or report.more else "ok"


async def replay_key(request: Request) -> Response:
    """Every failed event of one gateway key, run again (after its key was linked)."""
    service = service_of(request)
    key = str((await form_of(request)).get("remote_key_id", "")).strip()
    if not key:
        return back(request, "/admin/logs", "Replay by key needs a gateway key id", kind="error")
    report = await replay(service, LogFilter(key=key))
    return back(request, "/admin/logs", _said(report, f"of gateway key {key}"), kind=_kind(report), key=key)


async def replay_filtered(request: Request) -> Response:
    """Every failed event the logs' filter (sent back as the form's hidden fields) selects, run again."""
    service = service_of(request)
    form = await form_of(request)
    wanted = await _filter(service, form)
    if wanted.status not in (None, "failed"):
        raise ApiError(400, "status: a replay runs failed events again (failed, or no status)")
    if not any(form.get(name) for name in FIELDS if name != "status"):
        raise ApiError(400, "filter: choose a key, a user, an event id or a time first (a replay of a filter only)")
    report = await replay(service, wanted)
    return back(request, "/admin/logs", _said(report, "of this filter"), kind=_kind(report), **_kept(form))


async def replay_one(request: Request) -> Response:
    """The event id comes in the form, not the path: any id works, "." and ".." included."""
    service = service_of(request)
    event_id = str((await form_of(request)).get("event_id", ""))
    replayed = await service.run(lambda c: admin.replay(c, event_id, now_of(service)))
    if replayed is None:
        return back(request, "/admin/logs", "No such delivery", kind="error")
    count_replayed(replayed)
    outcome = replayed.outcome
    kind = "ok" if outcome.status.value in ("charged", "duplicate") else "warning"
    return back(request, "/admin/logs", f"{event_id}: {outcome.status.value}", kind=kind)
