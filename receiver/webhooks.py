"""The usage webhook endpoints of CONTRACT §3: parse, authenticate, hand to billing, render."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from billing.database import DatabaseUnavailable, ping
from billing.deliveries import DeliveryOutcome, DeliveryStatus
from receiver.bodies import read_limited, require_json
from receiver.errors import ApiError
from receiver.ingest import Ingestor
from receiver.metrics import EVENTS, REQUEST_SECONDS
from schema.signing import WebhookSecret, verify_signature
from schema.wire import EnvelopeError, parse_event

log = structlog.get_logger()


@dataclass(frozen=True)
class WebhookService:
    secrets: tuple[WebhookSecret, ...]
    body_limit: int
    ingestor: Ingestor
    engine: Engine
    clock: Callable[[], float]


def _service(request: Request) -> WebhookService:
    service: WebhookService = request.app.state.webhooks
    return service


# The 200 answers, rendered once: {"success":true,"eventId":…} followed by one of these.
_ANSWERS = {
    DeliveryStatus.CHARGED: {"message": "Event processed successfully", "duplicate": False},
    DeliveryStatus.DUPLICATE: {"message": "Event already processed", "duplicate": True},
    DeliveryStatus.IGNORED: {"message": "Event type ignored", "ignored": True},
}
_ANSWER_TAILS = {
    status: b"," + json.dumps(tail, separators=(",", ":"))[1:].encode() for status, tail in _ANSWERS.items()
}


def render_outcome(outcome: DeliveryOutcome) -> bytes:
    """The JSON body of a 200 answer; refusals raise ``ApiError``."""
    status = outcome.status
    if status is DeliveryStatus.CONFLICT:
        raise ApiError(409, f"Event {outcome.event_id} was already received with a different body")
    if status is DeliveryStatus.UNBILLABLE:
        raise ApiError(422, outcome.error or "Event cannot be billed", eventId=outcome.event_id)
    return b'{"success":true,"eventId":' + json.dumps(outcome.event_id).encode() + _ANSWER_TAILS[status]


class EventsEndpoint:
    """``POST /api/webhooks/events`` as a plain ASGI app: the hottest route answers with two ``send`` calls
    instead of Starlette's per-request endpoint wrapper and ``Response`` object. Refusals are raised as
    before and rendered by the app's exception handlers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            body = await _receive_event(Request(scope, receive))
        except ApiError as error:
            EVENTS.labels(_REFUSALS.get(error.status_code, str(error.status_code))).inc()
            raise
        except DatabaseUnavailable:
            EVENTS.labels("unavailable").inc()
            raise
        finally:
            REQUEST_SECONDS.observe(time.perf_counter() - started)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


receive_event = EventsEndpoint()


_COUNTED = {status: EVENTS.labels(status.value) for status in DeliveryStatus}
_REFUSALS = {400: "invalid", 401: "unauthenticated", 409: "conflict", 413: "too_large", 422: "unbillable"}


async def _receive_event(request: Request) -> bytes:
    service = _service(request)
    structlog.contextvars.clear_contextvars()
    body = await read_limited(request, service.body_limit)
    if not verify_signature(service.secrets, body, request.headers, service.clock()):
        log.info("webhook_rejected", reason="signature")
        raise ApiError(401, "Invalid webhook signature")
    require_json(request)
    try:
        event = parse_event(body)
    except EnvelopeError as error:
        raise ApiError(400, str(error)) from None
    structlog.contextvars.bind_contextvars(event_id=event.event_id)
    outcome = await service.ingestor.ingest(event)
    if outcome.status not in (DeliveryStatus.CONFLICT, DeliveryStatus.UNBILLABLE):  # refusals are counted as such
        _COUNTED[outcome.status].inc()
    routine = outcome.status in (DeliveryStatus.CHARGED, DeliveryStatus.DUPLICATE)
    (log.debug if routine else log.info)("webhook_event", status=outcome.status.value, user_id=outcome.user_id)
    return render_outcome(outcome)


async def health(request: Request) -> Response:
    service = _service(request)
    now = datetime.fromtimestamp(service.clock(), UTC).isoformat().replace("+00:00", "Z")
    try:
        await run_in_threadpool(ping, service.engine)
    except DatabaseUnavailable:
        return JSONResponse({"success": False, "message": "Database unavailable", "timestamp": now}, status_code=503)
    return JSONResponse({"success": True, "message": "Webhook service is healthy", "timestamp": now})
