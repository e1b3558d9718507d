"""The usage webhook endpoints (docs/webhooks.md): parse, authenticate, hand to billing, render."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from creditrelay.billing.deliveries import DeliveryOutcome, DeliveryStatus
from creditrelay.receiver.bodies import header_map, read_body, require_json
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.ingest import Ingestor
from creditrelay.receiver.metrics import EVENTS, REQUEST_SECONDS
from creditrelay.receiver.writers import WriterFailed, WriterStopped
from creditrelay.schema.errors import DatabaseUnavailable
from creditrelay.schema.shapes import iso
from creditrelay.schema.signing import WebhookSecret, verify_signature
from creditrelay.schema.wire import EnvelopeError, parse_event

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
            body = await _receive_event(scope["app"].state.webhooks, scope, receive)
        except ApiError as error:
            if error.status_code in _REFUSALS:  # an event's own outcomes (409, 422) are counted by the ingestor
                _REFUSALS[error.status_code].inc()
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


_REFUSALS = {
    status: EVENTS.labels(outcome)
    for status, outcome in ((400, "invalid"), (401, "unauthenticated"), (413, "too_large"))
}
_ROUTINE = (DeliveryStatus.CHARGED, DeliveryStatus.DUPLICATE)


async def _receive_event(service: WebhookService, scope: Scope, receive: Receive) -> bytes:
    """The 200 answer's body for one delivery; refusals raise ``ApiError``. The route runs without a
    Starlette ``Request``: headers are read once into a dict, the body straight from ``receive``."""
    headers = header_map(scope)
    body = await read_body(receive, headers, service.body_limit)
    if not verify_signature(service.secrets, body, headers, service.clock()):
        raise ApiError(401, "Invalid webhook signature")
    require_json(headers)
    try:
        event = parse_event(body)
    except EnvelopeError as error:
        raise ApiError(400, str(error)) from None
    outcome = await service.ingestor.ingest(event)
    # routine at debug; an event for a key nobody has is revenue lost until the key is linked: a warning
    level = log.debug if outcome.status in _ROUTINE else log.warning if outcome.error else log.info
    level("webhook_event", event_id=event.event_id, status=outcome.status, user_id=outcome.user_id, error=outcome.error)
    return render_outcome(outcome)


async def health(request: Request) -> Response:
    """200 while the webhook writers can commit (``GroupCommitter.check``); else 503."""
    service = _service(request)
    now = iso(datetime.fromtimestamp(service.clock(), UTC))
    committer = service.ingestor.committer
    committer.ensure_writers()
    if committer.stalled():
        message = f"No webhook writer has committed for {committer.stall_seconds:g} s"
        return _unhealthy(message, now)
    try:
        await committer.check(fresh=HEALTH_FRESH_SECONDS, timeout=HEALTH_PROBE_SECONDS)
    except WriterStopped:
        return _unhealthy("The webhook writer stopped", now)
    except DatabaseUnavailable:
        return _unhealthy("Database unavailable", now)
    except WriterFailed as error:  # the detail (the driver's words) is for the log, not for whoever asks
        log.error("health_probe_failed", error=str(error))
        return _unhealthy("The webhook writers could not commit", now)
    except TimeoutError:
        return _unhealthy(f"The webhook writers could not commit within {HEALTH_PROBE_SECONDS:g} s", now)
    return JSONResponse({"success": True, "message": "Webhook service is healthy", "timestamp": now})


HEALTH_FRESH_SECONDS = 1.0  # a batch committed this recently answers health without a probe
HEALTH_PROBE_SECONDS = 10.0  # past the lock timeout's one retry: a probe still waiting is a writer stuck


def _unhealthy(message: str, now: str) -> Response:
    return JSONResponse(
        {"success": False, "message": message, "timestamp": now}, status_code=503, headers={"Retry-After": "5"}
    )
