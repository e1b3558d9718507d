"""The relay's HTTP intake for gateways that are not written in Python (``creditrelay relay``).

``POST /events`` takes one unsigned event or a JSON array of them, checks each against the envelope,
commits them all to the outbox and only then answers 202 with their event ids; the relay in the same
process signs and delivers them. An event without ``eventId`` gets one minted here, once, at accept
time — but a gateway that may retry its own POST should mint ids itself (or send ``requestId``), or a
retried POST becomes a second event. ``GET /health`` reports the outbox; ``GET /metrics`` is the relay's
Prometheus metrics.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from creditrelay.schema.database import utc
from creditrelay.schema.errors import DatabaseUnavailable
from creditrelay.schema.wire import EnvelopeError, check_item, event_from_item, parse_event, parse_json, split_array
from creditrelay.sender.events import encode_event, mint_event_id
from creditrelay.sender.metrics import exposition
from creditrelay.sender.outbox import Outbox
from creditrelay.sender.relay import OutboxRelay

BODY_LIMIT = 4 * 1024 * 1024
MAX_EVENTS = 10_000  # per POST
EVENT_LIMIT = 64 * 1024  # what a receiver takes per event


def _refuse(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "message": message}, status_code=status_code)


def accept_events(body: bytes) -> list[tuple[str, bytes]]:
    """Check a POSTed body and turn it into (event id, exact bytes to send) pairs; raise EnvelopeError.

    An array's events are kept byte for byte as posted (each parsed once, to check it); only an event
    without ``eventId`` is encoded anew, with the id minted for it."""
    is_array = body.lstrip(b" \t\r\n")[:1] == b"["
    items = split_array(body, MAX_EVENTS) if is_array else [(body, parse_json(body))]
    accepted = []
    for index, (item, value) in enumerate(items):
        where = f"events[{index}]" if is_array else "event"
        try:
            check_item(item, value)
            if len(item) > EVENT_LIMIT:
                raise EnvelopeError(f"body: larger than {EVENT_LIMIT} bytes (a receiver refuses it)")
            if isinstance(value, dict) and "eventId" not in value:
                item = encode_event({"eventId": mint_event_id(), **value})
                event = parse_event(item)
            else:
                event = event_from_item(item, value)
        except EnvelopeError as error:
            raise EnvelopeError(f"{where}.{error}") from None
        accepted.append((event.event_id, item))
    return accepted


def create_sidecar(outbox: Outbox, relay: OutboxRelay, clock: Callable[[], float] = time.time) -> Starlette:
    async def post_events(request: Request) -> Response:
        body = await request.body()
        if len(body) > BODY_LIMIT:
            return _refuse(413, f"Body larger than {BODY_LIMIT} bytes")
        try:
            events = accept_events(body)
        except EnvelopeError as error:
            return _refuse(400, str(error))
        try:
            await asyncio.to_thread(outbox.enqueue, events, utc(clock()))
        except DatabaseUnavailable:  # an event whose commit was cut short is recognised by its eventId
            return _refuse(503, "The outbox's database is unavailable; send again")
        relay.notify()
        ids = [event_id for event_id, _ in events]
        return JSONResponse({"success": True, "accepted": len(ids), "eventIds": ids}, status_code=202)

    running: list[asyncio.Task[None]] = []

    async def health(_request: Request) -> Response:
        try:
            counts = await asyncio.to_thread(outbox.counts)
        except OperationalError:
            return _refuse(503, "The outbox's database is unavailable")
        if not running or running[0].done():
            return JSONResponse({"success": False, "message": "Relay is not running", **counts}, status_code=503)
        return JSONResponse({"success": True, "message": "Relay is running", **counts})

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        running.append(asyncio.create_task(relay.run(stop)))
        try:
            yield
        finally:
            stop.set()
            await running.pop()

    async def metrics(_request: Request) -> Response:
        return Response(await asyncio.to_thread(exposition, outbox), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/events", post_events, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
