"""The relay sends many events per request to a creditrelay receiver, one per request to a receiver
without the batch endpoint, and settles each event by its own answer."""

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from creditrelay.schema.signing import WebhookSecret
from creditrelay.sender.delivery import Signer
from creditrelay.sender.events import encode_event, usage_event
from creditrelay.sender.outbox import DEAD, DELIVERED, PENDING, Outbox
from creditrelay.sender.relay import OutboxRelay, RelayConfig
from tests.support.database import Database
from tests.support.ledger import assert_ledger_consistent
from tests.support.receiver import OPENING, Receiver
from tests.support.scripted_receiver import scripted_receiver
from tests.support.server import serving
from tests.support.signing import SECRET


def event(event_id: str, key: int = 1) -> tuple[str, bytes]:
    return event_id, encode_event(usage_event(remote_key_id=key, model="m", credit_cost=1, event_id=event_id))


def enqueue(outbox: Outbox, count: int) -> None:
    outbox.enqueue([event(f"evt-{i}") for i in range(count)])


def drain(relay: OutboxRelay, passes: int = 10) -> list[str]:
    """Passes until nothing is due; the paths of every request the relay made."""
    paths: list[str] = []

    async def record(request: httpx.Request) -> None:
        paths.append(request.url.path)

    async def run() -> None:
        async with httpx.AsyncClient(timeout=10, event_hooks={"request": [record]}) as client:
            for _ in range(passes):
                if not await relay.drain_once(client):
                    return

    asyncio.run(run())
    return paths


def test_batches_to_a_creditrelay_receiver_each_event_settled_by_its_own_answer(
    receiver: Receiver, database: Database
) -> None:
    outbox = Outbox(database.engine)
    enqueue(outbox, 250)
    outbox.enqueue([event("evt-stranger", key=999)])
    config = RelayConfig(url=f"{receiver.url}/api/webhooks/events", schedule=(0, 0))
    paths = drain(OutboxRelay(outbox, Signer(WebhookSecret.parse(SECRET)), config))
    assert set(paths) == {"/api/webhooks/batch"}
    assert len(paths) <= 4  # 251 events in batches of up to 100
    assert outbox.counts() == {PENDING: 0, DELIVERED: 250, DEAD: 1}  # the unknown key's 422 is final, alone
    [dead] = outbox.list_events(DEAD)
    assert dead["eventId"] == "evt-stranger"
    assert "unknown remoteKeyId 999" in str(outbox.attempts_of("evt-stranger")[-1]["snippet"])
    assert database.count("usage_records") == 250
    assert int(database.scalar("SELECT balance FROM users")) == OPENING - 250
    assert_ledger_consistent(database)


def test_one_event_per_request_to_a_receiver_without_the_batch_endpoint(database: Database) -> None:
    outbox = Outbox(database.engine)
    enqueue(outbox, 5)
    with scripted_receiver() as plain:  # knows only POST /api/webhooks/events
        relay = OutboxRelay(outbox, Signer(WebhookSecret.parse(SECRET)), RelayConfig(url=plain.url))
        paths = drain(relay)
        assert len(plain.seen) == 5
    assert paths == ["/api/webhooks/batch"] + ["/api/webhooks/events"] * 5  # asked once, then singles
    assert outbox.counts() == {PENDING: 0, DELIVERED: 5, DEAD: 0}


def test_one_bad_body_in_a_batch_dies_alone(receiver: Receiver, database: Database) -> None:
    outbox = Outbox(database.engine)
    enqueue(outbox, 10)
    bad = encode_event(usage_event(remote_key_id=1, model="m", credit_cost=1, event_id="evt-nan"))
    outbox.enqueue([("evt-nan", bad[:-1] + b',"latency":NaN}')])  # what json.dumps writes for float("nan")
    config = RelayConfig(url=f"{receiver.url}/api/webhooks/events", schedule=(0,))
    drain(OutboxRelay(outbox, Signer(WebhookSecret.parse(SECRET)), config))
    assert outbox.counts() == {PENDING: 0, DELIVERED: 10, DEAD: 1}
    assert database.count("usage_records") == 10


@pytest.mark.parametrize("status", [202, 302, 400, 403, 413, 200])
def test_a_batch_answer_that_is_not_one_per_event_sends_them_one_by_one(database: Database, status: int) -> None:
    """A proxy's 413, a login page's 302, a 403, a 202 without results, a 200 that is not ours: the events
    go again one per request, each to get its own answer."""
    seen: list[str] = []

    async def batch_route(_request: Request) -> Response:
        seen.append("batch")
        return Response(b"<html>not here</html>" if status == 200 else b"", status_code=status)

    async def single_route(request: Request) -> Response:
        seen.append("single")
        body = json.loads(await request.body())
        return JSONResponse({"success": True, "eventId": body["eventId"], "duplicate": False})

    app = Starlette(
        routes=[
            Route("/api/webhooks/batch", batch_route, methods=["POST"]),
            Route("/api/webhooks/events", single_route, methods=["POST"]),
        ]
    )
    outbox = Outbox(database.engine)
    enqueue(outbox, 5)
    with serving(app) as url:
        relay = OutboxRelay(outbox, Signer(WebhookSecret.parse(SECRET)), RelayConfig(url=f"{url}/api/webhooks/events"))
        drain(relay)
    assert outbox.counts() == {PENDING: 0, DELIVERED: 5, DEAD: 0}
    assert seen == ["batch"] + ["single"] * 5
