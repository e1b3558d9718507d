"""``POST /api/payments/stripe``: Stripe's events (docs/payments.md, decision 0035).

The raw body is read here, by the route itself: the receiver takes no middleware (decision 0015), so
nothing before it can read or change the body the signature is over. Then, in order:

- ``STRIPE_WEBHOOK_SECRET`` not set: 503 (Stripe retries, for days, until it is);
- a body over ``BODY_LIMIT``: 413;
- ``Stripe-Signature`` not Stripe's, or older than 300 s: 400, nothing recorded;
- not a Stripe event, or a field creditrelay needs missing: 400 naming it, nothing recorded;
- applied (billing.stripe_events): 200 — also for an event ignored or pending, which Stripe must not send
  again; a payment that cannot be applied is recorded (on its order and in ``stripe_events``) and answered
  422, so that Stripe sends it again and the retry after the operator's fix applies it — unless the
  session names nothing of creditrelay's (no member, package or order: not made for it), which no fix
  can apply: recorded as failed all the same, and answered 200;
- the database out of reach: 503, nothing half-written; Stripe retries.
"""

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from creditrelay.billing.stripe_events import EventStatus, Handled, handle_event
from creditrelay.receiver.bodies import read_limited
from creditrelay.receiver.errors import ApiError
from creditrelay.receiver.payments import payments_of
from creditrelay.receiver.stripe_checkout import TOLERANCE, verify_signature
from creditrelay.schema.database import utc
from creditrelay.schema.stripe_wire import parse_event
from creditrelay.schema.wire import EnvelopeError

log = structlog.get_logger()
PATH = "/api/payments/stripe"
BODY_LIMIT = 256 * 1024  # Stripe's events are a few KiB; a Checkout Session with much metadata, tens


async def stripe_event(request: Request) -> Response:
    service = payments_of(request)
    secret = service.stripe.webhook_secret if service.stripe is not None else None
    if secret is None:
        raise ApiError(503, "Stripe events are not taken here: STRIPE_WEBHOOK_SECRET is not set")
    raw = await read_limited(request, BODY_LIMIT)
    if not verify_signature(raw, request.headers.get("stripe-signature"), secret):
        log.warning("stripe_bad_signature", header=request.headers.get("stripe-signature", "")[:32])
        message = f"Invalid Stripe-Signature: not signed with STRIPE_WEBHOOK_SECRET, or older than {TOLERANCE} s"
        raise ApiError(400, message)
    now = utc(service.clock())
    try:
        event = parse_event(raw)
        handled: Handled = await service.write(lambda c: handle_event(c, event, service.packages, now))
    except EnvelopeError as error:
        raise ApiError(400, str(error)) from None
    log.info("stripe_event", event_id=event.id, type=event.type, status=handled.status.value, detail=handled.detail)
    failed = handled.status is EventStatus.FAILED
    body = {"success": not failed, "message": handled.detail, "eventId": event.id, "status": handled.status.value}
    return JSONResponse(body, status_code=422 if handled.retry else 200)
