"""The member's portal as JSON, for operators who build their own member page (docs/portal.md):
``GET /api/portal/account``, ``/api/portal/usage``, ``/api/portal/transactions``, each with
``Authorization: Bearer <portal token>``. A token that is not a live link — tampered, expired, revoked,
or none — is a 404 that says nothing more. What the pages and the API share is here too."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from creditrelay.billing import portal, user_queries
from creditrelay.billing.accounts import AccountError
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.params import day_range, query_optional_int
from creditrelay.schema.database import utc
from creditrelay.schema.shapes import to_json
from creditrelay.schema.transactions import run_transaction

NOT_FOUND = "Not found"  # the one answer to every link that does not work: it says nothing of why
TRANSACTIONS = 50
DEFAULT_RANGE_DAYS = 30
GROUPS = ("day", "model")


@dataclass(frozen=True)
class PortalService:
    engine: Engine
    keys: tuple[bytes, ...]
    clock: Callable[[], float]

    async def read(self, work: Callable[[Connection], Any]) -> Any:
        return await run_in_threadpool(lambda: run_transaction(self.engine, work, read_only=True))

    async def member(self, token: str) -> int:
        """The user a live link names; a 404 for any other token."""
        now = self.clock()
        found: int | None = await self.read(lambda c: portal.member_of(c, self.keys, token, now))
        if found is None:
            raise ApiError(404, NOT_FOUND)
        return found

    def today(self) -> date:
        return utc(self.clock()).date()


def service_of(request: Request) -> PortalService:
    service: PortalService = request.app.state.portal
    return service


def bearer_token(request: Request) -> str:
    """The portal token of ``Authorization: Bearer …``; a 404 without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(404, NOT_FOUND)
    return token.strip()


async def bearer_member(request: Request) -> tuple[PortalService, int]:
    service = service_of(request)
    return service, await service.member(bearer_token(request))


def _ok(data: Any) -> Response:
    return JSONResponse({"success": True, "message": "", "data": to_json(data)}, headers={"Cache-Control": "no-store"})


async def account(request: Request) -> Response:
    service, user_id = await bearer_member(request)
    return _ok(await service.read(lambda c: portal.account(c, user_id)))


async def usage(request: Request) -> Response:
    service, user_id = await bearer_member(request)
    start, end = day_range(request, service.today(), DEFAULT_RANGE_DAYS, portal.MAX_RANGE_DAYS)
    group_by = request.query_params.get("groupBy") or "day"
    if group_by not in GROUPS:
        raise ApiError(400, "groupBy: day or model")
    try:
        found = await service.read(lambda c: portal.usage(c, user_id, start, end))
    except AccountError as error:
        raise ApiError(400, str(error)) from None
    return _ok(portal.json_usage(found, group_by))


async def transactions(request: Request) -> Response:
    service, user_id = await bearer_member(request)
    before = query_optional_int(request, "before")
    limit = int(query_optional_int(request, "limit", maximum=200) or TRANSACTIONS)
    page = await service.read(lambda c: user_queries.transactions(c, user_id, limit, before))
    return _ok({"transactions": page.transactions, "older": page.older})
