"""``GET /api/gateway/allowance/{remoteKeyId}``: may the gateway serve this key now? For gateways that can
ask before they serve (LiteLLM's pre-call hook, a sidecar). One indexed read, no write.

``allowed`` is false while the key's user is at or below ``SUSPEND_AT_BALANCE``, whether or not a gateway
enforcement mode runs; ``available`` is what a hold may take now (balance - open holds - the line);
``suspended`` says whether creditrelay's latest word to the gateway about this user is a suspension (only
ever true with ``GATEWAY_ENFORCEMENT`` on). An unknown key is 404, naming the key
(``remoteKeyId``): what tells this 404 from any other, such as a wrong path's.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from creditrelay.billing.access import allowance_of
from creditrelay.receiver.bearer import require_bearer
from creditrelay.receiver.errors import ApiError
from creditrelay.schema.database import utc
from creditrelay.schema.shapes import to_json
from creditrelay.schema.transactions import run_transaction


@dataclass(frozen=True)
class AllowanceService:
    engine: Engine
    token: str | None
    suspend_at: int
    clock: Callable[[], float] = field(default=time.time)

    def authorize(self, request: Request) -> None:
        require_bearer(request, self.token, "GATEWAY_TOKEN")


async def allowance(request: Request) -> Response:
    service: AllowanceService = request.app.state.allowance
    service.authorize(request)
    remote_key_id = request.path_params["remote_key_id"]
    if not 0 < len(remote_key_id) <= 64:
        raise ApiError(400, "remoteKeyId: 1 to 64 characters")
    found = await run_in_threadpool(
        lambda: run_transaction(
            service.engine,
            lambda c: allowance_of(c, remote_key_id, service.suspend_at, utc(service.clock())),
            read_only=True,
        )
    )
    if found is None:
        raise ApiError(404, f"No user has gateway key {remote_key_id}", remoteKeyId=remote_key_id)
    return JSONResponse({"success": True, "message": "", "data": to_json(found)})
