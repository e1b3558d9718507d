"""The admin JSON API (`Authorization: Bearer ADMIN_TOKEN`): users, transactions, webhook logs, replay,
top-ups and stats — the same billing calls the admin pages are to use."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from creditrelay.billing import admin
from creditrelay.billing.accounts import AccountError, ReferenceConflict, top_up
from creditrelay.billing.ledger import CreditStatus, UnknownUser
from creditrelay.billing.log_queries import LogFilter, find_logs
from creditrelay.receiver.bearer import require_bearer
from creditrelay.receiver.bodies import read_limited, require_json
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.metrics import ADMIN_REPLAYS, CREDITS_ADDED, CREDITS_CHARGED
from creditrelay.receiver.params import path_int, query_int, query_moment, query_optional_int
from creditrelay.schema.database import utc
from creditrelay.schema.shapes import to_json
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import EnvelopeError, parse_json_object, plain_int


@dataclass(frozen=True)
class AdminService:
    engine: Engine
    token: str | None
    clock: Callable[[], float]
    suspend_at: int = 0  # balances at or below are suspended (flagged on the pages)
    low_at: int | None = None  # balances below are low (flagged)
    enforcement: str = "off"
    portal_keys: tuple[bytes, ...] = ()  # the first signs members' portal links
    public_base_url: str | None = None

    def authorize(self, request: Request) -> None:
        require_bearer(request, self.token, "ADMIN_TOKEN")

    async def run(self, work: Callable[[Connection], Any]) -> Any:
        """``work`` in a writing transaction, off the event loop."""
        return await run_in_threadpool(run_transaction, self.engine, work)

    async def read(self, work: Callable[[Connection], Any]) -> Any:
        """``work`` in a read-only transaction (on SQLite it never holds up the webhook writers)."""
        return await run_in_threadpool(lambda: run_transaction(self.engine, work, read_only=True))


def _service(request: Request) -> AdminService:
    service: AdminService = request.app.state.admin
    service.authorize(request)
    return service


def _ok(data: Any) -> Response:
    return JSONResponse({"success": True, "message": "", "data": to_json(data)})


async def users(request: Request) -> Response:
    service = _service(request)
    query = request.query_params.get("q", "")
    limit = query_int(request, "limit", 20, maximum=200)
    return _ok(await service.read(lambda c: admin.search_users(c, query, limit)))


async def user(request: Request) -> Response:
    service = _service(request)
    user_id = path_int(request, "user_id")
    limit = query_int(request, "limit", 50, maximum=500)
    before = query_optional_int(request, "before")
    found = await service.read(lambda c: admin.user_detail(c, user_id, limit, before))
    if found is None:
        raise ApiError(404, f"No user {user_id}")
    return _ok(found)


async def topup(request: Request) -> Response:
    """A top-up needs a reference, so a form submitted twice credits once."""
    service = _service(request)
    user_id = path_int(request, "user_id")
    body = await read_limited(request, 16 * 1024)
    require_json(request.headers)
    try:
        document = parse_json_object(body)
    except EnvelopeError as error:
        raise ApiError(400, str(error)) from None
    amount, reference, reason = document.get("amount"), document.get("reference"), document.get("reason")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise ApiError(400, "amount: must be a positive integer")
    if not isinstance(reference, str):
        raise ApiError(400, "reference: 1 to 128 characters, required")
    now = utc(service.clock())
    try:
        outcome = await service.run(lambda c: top_up(c, user_id, amount, reference, now, str(reason or "")))
    except UnknownUser:
        raise ApiError(404, f"No user {user_id}") from None
    except ReferenceConflict as error:
        raise ApiError(409, str(error)) from None
    except AccountError as error:
        raise ApiError(400, str(error)) from None
    if outcome.status is CreditStatus.APPLIED:
        CREDITS_ADDED.labels("admin").inc(amount)
    return _ok({"balance": outcome.balance, "duplicate": outcome.status is CreditStatus.DUPLICATE})


async def webhook_logs(request: Request) -> Response:
    service = _service(request)
    status = request.query_params.get("status")
    if status is not None and status not in admin.STATUSES:
        raise ApiError(400, f"status: one of {', '.join(admin.STATUSES)}")
    since, until = query_moment(request, "since"), query_moment(request, "until")
    limit = query_int(request, "limit", 50, maximum=500)
    before = query_optional_int(request, "before")
    after = None if (text := request.query_params.get("after")) is None else plain_int(text)
    if after is None and text is not None:
        raise ApiError(400, "after: the id of a delivery, or 0 for the oldest page")
    params = request.query_params
    key, event_id = params.get("key") or None, params.get("eventId") or None
    wanted = LogFilter(status, since, until, key=key, user_id=query_optional_int(request, "userId"), event_id=event_id)
    found = await service.read(lambda c: find_logs(c, wanted, limit, before=before, after=after))
    return _ok(found.logs)


async def replay(request: Request) -> Response:
    """The event id from the path (URL-encoded), or for ``POST …/webhook-logs/replay`` from the body's
    ``eventId`` (any id, "." and ".." included, which URLs cannot carry as a path segment)."""
    service = _service(request)
    if "event_id" in request.path_params:
        event_id = request.path_params["event_id"]
    else:
        require_json(request.headers)
        try:
            body = parse_json_object(await read_limited(request, 16 * 1024))
        except EnvelopeError as error:
            raise ApiError(400, str(error)) from None
        event_id = body.get("eventId")
        if not isinstance(event_id, str) or not event_id:
            raise ApiError(400, "eventId: the stored delivery's event id, a string")
    replayed = await service.run(lambda c: admin.replay(c, event_id, utc(service.clock())))
    if replayed is None:
        raise ApiError(404, f"No stored delivery {event_id}")
    ADMIN_REPLAYS.labels(replayed.outcome.status.value).inc()
    if replayed.credits:
        CREDITS_CHARGED.labels("replay").inc(replayed.credits)
    outcome = replayed.outcome
    return _ok({"eventId": outcome.event_id, "status": outcome.status.value, "error": outcome.error})


async def stats(request: Request) -> Response:
    service = _service(request)
    return _ok(await service.read(lambda c: admin.stats(c, utc(service.clock()))))
