"""The credit API (docs/credit-api.md): parse, authenticate, hand to billing, render."""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from creditrelay.billing.clients import Client, authenticate
from creditrelay.billing.credit_sync import (
    MAX_RECORDS,
    SyncOutcome,
    SyncRefused,
    SyncStatus,
    SyncUnavailable,
    apply_syncs,
    balance_of,
    records_of,
)
from creditrelay.receiver.bodies import read_limited, require_json
from creditrelay.receiver.clients import records_source, require_right, verify_request
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.metrics import CREDIT_API_ANSWERS, CREDITS_ADDED, CREDITS_DEDUCTED
from creditrelay.receiver.params import path_int, positive_int, query_int
from creditrelay.receiver.rate_limit import RateLimiter
from creditrelay.schema.credit_sync import (
    BALANCE,
    IDENTIFIERS,
    MAX_BATCH_ITEMS,
    Member,
    SyncBody,
    member_of,
    parse_sync_body,
    right_to_change,
)
from creditrelay.schema.database import utc
from creditrelay.schema.errors import Forbidden, InvalidInput
from creditrelay.schema.money import MAX_BALANCE
from creditrelay.schema.shapes import snake, to_json
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import EnvelopeError, parse_json_object

log = structlog.get_logger()
BODY_LIMIT = 1024 * 1024

_ANSWERS: dict[SyncStatus, tuple[int, str]] = {
    SyncStatus.APPLIED: (200, "Credits updated"),
    SyncStatus.DUPLICATE: (200, "Already applied: this external_reference was synced before"),
    SyncStatus.REPLAYED: (409, "This token was already used: sign a new request"),
    SyncStatus.CONFLICT: (409, "This external_reference was already used for another user or amount"),
    SyncStatus.INSUFFICIENT: (402, "Insufficient credits"),
    SyncStatus.BAD_TERMS: (400, "expires_at: must be in the future"),
    SyncStatus.OUT_OF_RANGE: (422, f"amount: the balance would pass the maximum of ±{MAX_BALANCE} credits"),
    SyncStatus.UNKNOWN_USER: (404, "User not registered"),
}


Endpoint = Callable[[Request], Awaitable[Response]]


def counted(endpoint: str, handler: Endpoint) -> Endpoint:
    """``handler``, its answers counted by status (a refusal raised, rendered later, by the status it means)."""

    async def answer(request: Request) -> Response:
        try:
            response = await handler(request)
        except Exception as error:
            CREDIT_API_ANSWERS.labels(endpoint, str(getattr(error, "status_code", 500))).inc()
            raise
        CREDIT_API_ANSWERS.labels(endpoint, str(response.status_code)).inc()
        return response

    return answer


def _count_credits(client: Client, outcomes: Sequence[SyncOutcome]) -> None:
    """The credits applied (committed) by a client's requests, added and deducted, labelled by its source."""
    source = f"credit_api:{client.source}"
    added = sum(o.change for o in outcomes if o.status is SyncStatus.APPLIED and o.change > 0)
    taken = -sum(o.change for o in outcomes if o.status is SyncStatus.APPLIED and o.change < 0)
    if added:
        CREDITS_ADDED.labels(source).inc(added)
    if taken:
        CREDITS_DEDUCTED.labels(source).inc(taken)


@dataclass(frozen=True)
class CreditService:
    engine: Engine
    default_secret: str | None
    clock: Callable[[], float]
    limiter: RateLimiter | None = None
    suspend_at: int = 0  # SUSPEND_AT_BALANCE: not available to a hold


def service_of(request: Request) -> CreditService:
    service: CreditService = request.app.state.credits
    return service


async def client_of(request: Request, service: CreditService) -> Client:
    api_key = request.headers.get("x-api-key", "")
    client = await run_in_threadpool(
        lambda: run_transaction(service.engine, lambda c: authenticate(c, api_key), read_only=True)
    )
    if not api_key or client is None:
        raise ApiError(401, "Invalid API key")
    structlog.contextvars.bind_contextvars(source=client.source)
    if service.limiter is not None and (wait := service.limiter.wait_needed(client.source)) > 0:
        raise ApiError(429, "Rate limit exceeded for this API key", headers={"Retry-After": str(int(wait) + 1)})
    return client


def _member(request: Request) -> Member:
    """Whom a read names: the path's telegram id (``/balance/{telegram_id}``), or exactly one of the
    query's ``telegram_id``, ``user_id`` and ``email``."""
    if "telegram_id" in request.path_params:
        return Member("telegram_id", path_int(request, "telegram_id"))
    query = request.query_params
    try:
        member = member_of({name: query.get(name) or None for name in IDENTIFIERS})
    except InvalidInput as error:
        raise ApiError(400, str(error)) from None
    if member.field == "email":
        return member
    return Member(member.field, positive_int(str(member.value), member.field))


def _verified(client: Client, body: SyncBody, service: CreditService) -> None:
    """Authentic (401 otherwise), then permitted (403: the client lacks the right to credit, or to debit)."""
    try:
        verify_request(client, body, service.clock(), service.default_secret)
    except SyncRefused as error:
        raise ApiError(401, str(error)) from None
    except SyncUnavailable as error:
        raise ApiError(503, str(error)) from None
    require_right(client, right_to_change(body.amount))


def _answer(outcome: SyncOutcome) -> tuple[int, dict[str, Any]]:
    status, message = _ANSWERS[outcome.status]
    data = None
    if outcome.status not in (SyncStatus.UNKNOWN_USER, SyncStatus.REPLAYED, SyncStatus.BAD_TERMS):
        data = {
            outcome.member.field: outcome.member.value,
            "balance": outcome.balance,
            "change": outcome.change,
            "duplicate": outcome.duplicate,
        }
    return status, {"success": status == 200, "message": message, "data": data}


async def _apply(service: CreditService, body: SyncBody) -> SyncOutcome:
    def work(connection: Connection) -> SyncOutcome:
        [outcome] = apply_syncs(connection, [body], utc(service.clock()))
        return outcome

    outcome: SyncOutcome = await run_in_threadpool(run_transaction, service.engine, work)
    member = body.member
    log.info("credit_sync", status=outcome.status.value, **{member.field: member.value}, change=outcome.change)
    return outcome


async def json_body(request: Request) -> dict[str, Any]:
    body = await read_limited(request, BODY_LIMIT)
    require_json(request.headers)
    try:
        return parse_json_object(body)
    except EnvelopeError as error:
        raise ApiError(400, str(error)) from None


async def sync(request: Request) -> Response:
    structlog.contextvars.clear_contextvars()
    service = service_of(request)
    client = await client_of(request, service)
    try:
        body = parse_sync_body(await json_body(request))
    except EnvelopeError as error:
        raise ApiError(400, str(error)) from None
    _verified(client, body, service)
    outcome = await _apply(service, body)
    _count_credits(client, [outcome])
    status, answer = _answer(outcome)
    return JSONResponse(answer, status_code=status)


async def batch(request: Request) -> Response:
    """Each item checked on its own (a malformed or forged item is refused alone); the valid ones applied
    in one transaction, so a batch is all-or-nothing: an outage or a refused statement applies none of
    it (503 / 500, retry the whole batch), and a 200 means every item answered ``applied`` is committed."""
    structlog.contextvars.clear_contextvars()
    service = service_of(request)
    client = await client_of(request, service)
    items = (await json_body(request)).get("items")
    if not isinstance(items, list) or not items:
        raise ApiError(400, "items: must be a non-empty list")
    if len(items) > MAX_BATCH_ITEMS:
        raise ApiError(400, f"items: at most {MAX_BATCH_ITEMS} per batch")
    results: list[dict[str, Any] | None] = []
    valid: list[tuple[int, SyncBody]] = []
    for index, item in enumerate(items):
        try:
            body = parse_sync_body(item, f"items.{index}")
            _verified(client, body, service)
        except (EnvelopeError, ApiError, Forbidden) as error:
            status = 400 if isinstance(error, EnvelopeError) else error.status_code
            results.append({"index": index, "status": status, "success": False, "message": str(error), "data": None})
            continue
        results.append(None)
        valid.append((index, body))
    now = utc(service.clock())
    outcomes: list[SyncOutcome] = await run_in_threadpool(
        run_transaction, service.engine, lambda c: apply_syncs(c, [body for _, body in valid], now)
    )
    _count_credits(client, outcomes)
    for (index, _), outcome in zip(valid, outcomes, strict=True):
        status, answer = _answer(outcome)
        results[index] = {"index": index, "status": status} | answer
    answered = [r for r in results if r is not None]
    succeeded = sum(1 for r in answered if r["success"])
    log.info("credit_batch", items=len(answered), applied=succeeded)
    data = {"success": succeeded, "failed": len(answered) - succeeded, "results": answered}
    return JSONResponse(
        {"success": True, "message": f"{succeeded} applied, {len(answered) - succeeded} failed", "data": data}
    )


async def balance(request: Request) -> Response:
    service = service_of(request)
    require_right(await client_of(request, service), BALANCE)
    member = _member(request)
    found = await run_in_threadpool(
        lambda: run_transaction(service.engine, lambda c: balance_of(c, member), read_only=True)
    )
    if found is None:
        raise ApiError(404, "User not registered")
    data = {member.field: member.value, "credits": found.credits, "nickname": found.nickname}
    return JSONResponse({"success": True, "message": "", "data": data})


async def records(request: Request) -> Response:
    service = service_of(request)
    source = records_source(await client_of(request, service))
    member = _member(request)
    limit = query_int(request, "limit", 20, maximum=MAX_RECORDS)
    found = await run_in_threadpool(
        lambda: run_transaction(service.engine, lambda c: records_of(c, member, limit, source), read_only=True)
    )
    if found is None:
        raise ApiError(404, "User not registered")
    return JSONResponse(
        {"success": True, "message": "", "data": {member.field: member.value, "records": to_json(found, snake)}}
    )
