"""``POST /api/webhooks/batch``: many events in one signed request, for senders that have many to send
(creditrelay's own relay). The body is a JSON array of events, signed like a single delivery over the raw
body; each event is answered, in order, exactly as ``POST /api/webhooks/events`` would have answered it
alone — its HTTP status beside the same JSON — and one event's refusal never fails the others.

Refused whole: a bad signature (401), a body that is not JSON text or not an array or holds more than
``MAX_EVENTS`` events (400), a body over ``MAX_BYTES`` (413), the database unavailable (503: some events
may have committed before it went; a sender sends them all again and those are duplicates).
"""

import json
import time
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from creditrelay.billing.deliveries import DeliveryOutcome
from creditrelay.receiver.bodies import read_body, require_json
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.metrics import BATCH_EVENTS, EVENTS, REQUEST_SECONDS
from creditrelay.receiver.webhooks import WebhookService, render_outcome
from creditrelay.schema.errors import DatabaseUnavailable
from creditrelay.schema.signing import verify_signature
from creditrelay.schema.wire import EnvelopeError, Event, event_from_item, split_array

log = structlog.get_logger()
MAX_EVENTS = 500
MAX_BYTES = 4 * 1024 * 1024
_OK_PREFIX = b'{"status":200,'


def _answer(outcome: DeliveryOutcome | BaseException) -> bytes:
    """One event's answer: ``{"status": <HTTP status>, ...the single endpoint's JSON...}``."""
    if isinstance(outcome, DeliveryOutcome):
        try:
            return _OK_PREFIX + render_outcome(outcome)[1:]
        except ApiError as error:
            return _refusal(error.status_code, error.message, **error.extra)
    if isinstance(outcome, DatabaseUnavailable):
        EVENTS.labels("unavailable").inc()
        raise outcome
    log.error("batch_event_failed", error=repr(outcome))
    return _refusal(500, "Internal error")


def _refusal(status: int, message: str, **extra: Any) -> bytes:
    return json.dumps({"status": status, "success": False, "message": message, **extra}).encode()


async def receive_batch(request: Request) -> Response:
    service: WebhookService = request.app.state.webhooks
    started = time.perf_counter()
    try:
        body = await read_body(request.receive, request.headers, MAX_BYTES)
        if not verify_signature(service.secrets, body, request.headers, service.clock()):
            EVENTS.labels("unauthenticated").inc()
            raise ApiError(401, "Invalid webhook signature")
        require_json(request.headers)
        try:
            items = split_array(body, MAX_EVENTS)
        except EnvelopeError as error:
            EVENTS.labels("invalid").inc()
            raise ApiError(400, str(error)) from None
        answers: list[bytes | None] = [None] * len(items)
        events: list[Event] = []
        places: list[int] = []
        for index, (item, value) in enumerate(items):
            if len(item) > service.body_limit:
                answers[index] = _refusal(413, f"Event larger than {service.body_limit} bytes")
                continue
            try:
                events.append(event_from_item(item, value))
                places.append(index)
            except EnvelopeError as error:
                EVENTS.labels("invalid").inc()
                answers[index] = _refusal(400, str(error))
        BATCH_EVENTS.observe(len(items))
        outcomes = await service.ingestor.ingest_many(events) if events else []
        for index, outcome in zip(places, outcomes, strict=True):
            answers[index] = _answer(outcome)
    finally:
        REQUEST_SECONDS.observe(time.perf_counter() - started)
    payload = b'{"success":true,"results":[' + b",".join(a for a in answers if a is not None) + b"]}"
    return Response(payload, media_type="application/json")
