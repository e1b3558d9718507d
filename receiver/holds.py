"""``POST /api/gateway/holds`` and ``DELETE /api/gateway/holds/{holdId}``: a gateway sets credits aside
before it serves a request, and gives them back when it does not (docs/grants-and-holds.md). Bearer
``GATEWAY_TOKEN``, as the allowance endpoint; an unknown key is 404 naming it, as there."""

from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from creditrelay.billing.holds import GATEWAY, VOIDED, HoldOutcome, HoldRequest, end_hold, place_hold
from creditrelay.billing.rows import key_owners
from creditrelay.receiver.allowance import AllowanceService
from creditrelay.receiver.bodies import read_limited, require_json
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.params import path_int
from creditrelay.schema.database import utc
from creditrelay.schema.holds import parse_gateway_hold
from creditrelay.schema.shapes import to_json
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import EnvelopeError, parse_json_object

BODY_LIMIT = 16 * 1024


async def place(request: Request) -> Response:
    """201 with the hold when the member's available credits cover it, else 200 ``allowed: false``."""
    service: AllowanceService = request.app.state.allowance
    service.authorize(request)
    raw = await read_limited(request, BODY_LIMIT)
    require_json(request.headers)
    try:
        body = parse_gateway_hold(parse_json_object(raw))
    except EnvelopeError as error:
        raise ApiError(400, str(error)) from None
    key = str(body.remoteKeyId)
    now = utc(service.clock())

    def work(connection: Connection) -> HoldOutcome | None:
        owner = key_owners(connection, [key]).get(key)
        if owner is None:
            return None
        asked = HoldRequest(owner, body.amount, GATEWAY, body.ttlSeconds, body.requestId, key)
        return place_hold(connection, asked, service.suspend_at, now)

    outcome = await run_in_threadpool(run_transaction, service.engine, work)
    if outcome is None:
        raise ApiError(404, f"No user has gateway key {key}", remoteKeyId=key)
    if outcome.hold is None:
        data = {"allowed": False, "available": outcome.available}
        return JSONResponse({"success": True, "message": "Not enough available credits", "data": data})
    hold = outcome.hold
    data = {"holdId": hold.id, "allowed": True, "available": outcome.available, "expiresAt": to_json(hold.expires_at)}
    return JSONResponse({"success": True, "message": "", "data": data}, status_code=201)


async def void(request: Request) -> Response:
    """Give a hold back; a hold already ended is answered as it is (its ``state``), nothing changed."""
    service: AllowanceService = request.app.state.allowance
    service.authorize(request)
    hold_id = path_int(request, "hold_id")
    now = utc(service.clock())
    hold = await run_in_threadpool(
        run_transaction, service.engine, lambda c: end_hold(c, hold_id, GATEWAY, VOIDED, now)
    )
    return JSONResponse({"success": True, "message": "", "data": {"holdId": hold.id, "state": hold.state}})
