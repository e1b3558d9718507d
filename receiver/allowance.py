"""``GET /api/gateway/allowance/{remoteKeyId}``: may the gateway serve this key now? For gateways that can
ask before they serve (LiteLLM's pre-call hook, a sidecar). One indexed read, no write.

``allowed`` is false while the key's user is at or below ``SUSPEND_AT_BALANCE``, whether or not a gateway
enforcement mode runs; ``suspended`` says whether creditrelay's latest word to the gateway about this user
is a suspension (only ever true with ``GATEWAY_ENFORCEMENT`` on). An unknown key is 404.
"""

import hmac
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from creditrelay.billing.watch import SUSPEND
from creditrelay.receiver.errors import ApiError
from creditrelay.schema.database import run_transaction
from creditrelay.schema.tables import api_keys, gateway_states, users


@dataclass(frozen=True)
class AllowanceService:
    engine: Engine
    token: str | None
    suspend_at: int

    def authorize(self, request: Request) -> None:
        if self.token is None:
            raise ApiError(403, "Allowance API disabled: set GATEWAY_TOKEN")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ApiError(401, "Gateway token required (Authorization: Bearer …)")


def _lookup(connection: Connection, remote_key_id: str) -> tuple[int, str | None] | None:
    query = (
        sa.select(users.c.balance, gateway_states.c.desired)
        .select_from(api_keys.join(users, users.c.id == api_keys.c.userId))
        .outerjoin(gateway_states, gateway_states.c.userId == users.c.id)
        .where(api_keys.c.remoteKeyId == remote_key_id)
    )
    row = connection.execute(query).one_or_none()
    return None if row is None else (int(row.balance), row.desired)


async def allowance(request: Request) -> Response:
    service: AllowanceService = request.app.state.allowance
    service.authorize(request)
    remote_key_id = request.path_params["remote_key_id"]
    if not 0 < len(remote_key_id) <= 64:
        raise ApiError(400, "remoteKeyId: 1 to 64 characters")
    found = await run_in_threadpool(
        lambda: run_transaction(service.engine, lambda c: _lookup(c, remote_key_id), read_only=True)
    )
    if found is None:
        raise ApiError(404, f"No user has gateway key {remote_key_id}")
    balance, desired = found
    data = {"allowed": balance > service.suspend_at, "balance": balance, "suspended": desired == SUSPEND}
    return JSONResponse({"success": True, "message": "", "data": data})
