"""Delivering many events in one request: ``POST /api/webhooks/batch`` of a creditrelay receiver takes a
JSON array of events, signed like one event over the raw body, and answers each event, in order, as its
single endpoint would have. A receiver without it (a plain receiver of the original webhook, which knows
only ``POST …/events``) answers 404 or 405: the relay then sends one event per request.

An event's own answer settles it exactly as a single delivery's would (a final 4xx makes that event
dead, not its batch-mates); an answer for the whole request (no answer, a 5xx, a 429) applies to every
event in it; any other answer for the whole request sends its events again one per request, each to get
an answer of its own.
"""

import json
import time
import uuid
from collections.abc import Sequence

import httpx

from creditrelay.schema.outbox import SNIPPET_LENGTH
from creditrelay.sender.delivery import Attempt, Signer, Verdict, attempt_from_error, attempt_from_response, classify
from creditrelay.sender.outbox import OutboxEvent

EVENTS_PATH = "/api/webhooks/events"
BATCH_PATH = "/api/webhooks/batch"
MAX_EVENTS = 100  # per request: the receiver takes up to 500
MAX_BYTES = 900 * 1024  # per request: the receiver takes 4 MiB, the shipped nginx site 1 MiB
UNSUPPORTED, SINGLY = "unsupported", "singly"  # no batch endpoint there; this answer is not one per event


def batch_url(events_url: str) -> str | None:
    """The batch endpoint beside ``events_url``, if that is a receiver's single-event endpoint."""
    base, found, rest = events_url.rpartition(EVENTS_PATH)
    return base + BATCH_PATH if found and rest in ("", "/") else None


def chunks(
    events: Sequence[OutboxEvent], max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES
) -> list[list[OutboxEvent]]:
    """``events`` in order, cut into requests of at most ``max_events`` events and ``max_bytes`` bytes."""
    found: list[list[OutboxEvent]] = []
    size = 0
    for event in events:
        if not found or len(found[-1]) == max_events or size + len(event.body) + 1 > max_bytes:
            found.append([])
            size = 1
        found[-1].append(event)
        size += len(event.body) + 1
    return found


async def deliver_batch(
    client: httpx.AsyncClient, url: str, events: Sequence[OutboxEvent], signer: Signer
) -> list[Attempt] | str:
    """One try for every event of ``events`` in one request: each event's attempt when the receiver
    answered for each (or for the whole request, when it is down: no answer, 5xx, 408, 429);
    ``UNSUPPORTED`` when it has no batch endpoint (404, 405); ``SINGLY`` for any other answer (a 3xx, a
    2xx other than 200, a 4xx for the whole request, results that are not one per event): those events
    are then sent one per request, so that each gets an answer of its own."""
    body = b"[" + b",".join(e.body for e in events) + b"]"
    started = time.time()
    try:
        response = await client.post(url, content=body, headers=signer.headers(f"batch_{uuid.uuid4().hex}", body))
    except httpx.HTTPError as error:
        return [attempt_from_error(e.event_id, started, error, time.time()) for e in events]
    if response.status_code in (404, 405):
        return UNSUPPORTED
    finished = time.time()
    if response.status_code >= 500 or response.status_code in (408, 429):
        return [attempt_from_response(e.event_id, started, response, finished) for e in events]
    if response.status_code != 200:
        return SINGLY
    try:
        results = response.json()["results"]
        if not isinstance(results, list) or len(results) != len(events):
            return SINGLY
        return [_attempt(e.event_id, started, finished, result) for e, result in zip(events, results, strict=True)]
    except (ValueError, KeyError, TypeError):
        return SINGLY


def _attempt(event_id: str, started: float, finished: float, result: object) -> Attempt:
    status = result.get("status") if isinstance(result, dict) else None
    if type(status) is not int or not 100 <= status <= 599:
        raise ValueError("a result without its HTTP status")
    assert isinstance(result, dict)
    snippet = json.dumps({k: v for k, v in result.items() if k != "status"})[:SNIPPET_LENGTH]
    latency = int((finished - started) * 1000)
    return Attempt(
        event_id, started, classify(status), status, latency, snippet, duplicate=result.get("duplicate") is True
    )


def receiver_down(attempts: Sequence[Attempt]) -> bool:
    """Whether a request's answer says the receiver as a whole is not taking events now."""
    first = attempts[0]
    return (
        first.verdict is Verdict.RETRY
        and all(a.status_code == first.status_code for a in attempts)
        and (first.status_code is None or first.status_code >= 500 or first.status_code in (408, 429))
    )
