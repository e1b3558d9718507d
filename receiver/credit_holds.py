"""``POST /api/credits/holds``, ``…/{id}/capture`` and ``…/{id}/void`` (docs/credit-api.md#holds): parse,
authenticate as ``sync`` does (``X-Api-Key``, a signed token used once), hand to billing, render. Holding and
capturing need the client's ``debit`` right, as a deduction does."""

from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from creditrelay.billing.credit_holds import CreditHoldOutcome, HoldStatus, capture_hold, hold_credits, void_hold
from creditrelay.billing.credit_sync import SyncRefused, SyncUnavailable
from creditrelay.billing.holds import Hold
from creditrelay.receiver.clients import require_right, verify_hold_request
from creditrelay.receiver.credits import client_of, json_body, service_of
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.params import path_int
from creditrelay.schema.credit_holds import CaptureBody, HoldBody, VoidBody, parse_signed
from creditrelay.schema.credit_sync import DEBIT
from creditrelay.schema.database import utc
from creditrelay.schema.shapes import iso
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import EnvelopeError

log = structlog.get_logger()

_REFUSED = {
    HoldStatus.REPLAYED: (409, "This token was already used: sign a new request"),
    HoldStatus.UNKNOWN_USER: (404, "User not registered"),
}


async def _verified(request: Request, model: type[Any], hold_id: int | None) -> Any:
    structlog.contextvars.clear_contextvars()
    service = service_of(request)
    client = await client_of(request, service)
    try:
        body = parse_signed(model, await json_body(request))
    except EnvelopeError as error:
        raise ApiError(400, str(error)) from None
    try:
        verify_hold_request(client, body, hold_id, service.clock(), service.default_secret)
    except SyncRefused as error:
        raise ApiError(401, str(error)) from None
    except SyncUnavailable as error:
        raise ApiError(503, str(error)) from None
    require_right(client, DEBIT)
    return body


def _shown(hold: Hold) -> dict[str, Any]:
    released = hold.amount - (hold.settled or 0) if hold.state != "open" else 0
    return {
        "hold_id": hold.id, "amount": hold.amount, "state": hold.state, "captured": hold.settled,
        "released": released, "expires_at": iso(hold.expires_at),
    }  # fmt: skip


def _answer(outcome: CreditHoldOutcome, created: bool = False) -> Response:
    if outcome.status in _REFUSED:
        status, message = _REFUSED[outcome.status]
        return JSONResponse({"success": False, "message": message, "data": None}, status_code=status)
    if outcome.status is HoldStatus.INSUFFICIENT:
        data = {"available": outcome.available}
        return JSONResponse({"success": False, "message": "Insufficient credits", "data": data}, status_code=402)
    assert outcome.hold is not None
    data = _shown(outcome.hold) | ({"available": outcome.available} if outcome.available is not None else {})
    return JSONResponse({"success": True, "message": "", "data": data}, status_code=201 if created else 200)


async def hold(request: Request) -> Response:
    """201 with the hold; the same reference again (a retry) is the same hold; 402 when the member's
    available credits do not cover it."""
    body: HoldBody = await _verified(request, HoldBody, None)
    service = service_of(request)
    now = utc(service.clock())
    outcome = await run_in_threadpool(
        run_transaction, service.engine, lambda c: hold_credits(c, body, service.suspend_at, now)
    )
    member = body.member
    log.info("credit_hold", status=outcome.status.value, **{member.field: member.value}, amount=body.amount)
    return _answer(outcome, created=True)


async def capture(request: Request) -> Response:
    return await _end(request, CaptureBody, capture_hold)


async def void(request: Request) -> Response:
    return await _end(request, VoidBody, void_hold)


async def _end(request: Request, model: type[Any], end: Callable[..., CreditHoldOutcome]) -> Response:
    """Capture or void the path's hold: the body verified against that hold's id, then ``end`` in one
    transaction."""
    hold_id = path_int(request, "hold_id")
    body = await _verified(request, model, hold_id)
    service = service_of(request)
    now = utc(service.clock())

    def work(connection: Connection) -> CreditHoldOutcome:
        return end(connection, hold_id, body, now)

    return _answer(await run_in_threadpool(run_transaction, service.engine, work))
