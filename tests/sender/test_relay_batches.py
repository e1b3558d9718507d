"""The relay sends many events per request to a creditrelay receiver, one per request to a receiver
without the batch endpoint, and settles each event by its own answer."""

import asyncio

import httpx

from creditrelay.schema.signing import WebhookSecret
from creditrelay.sender.delivery import Signer
from creditrelay.sender.events import encode_event, usage_event
from creditrelay.sender.outbox import DEAD, DELIVERED, PENDING, Outbox
from creditrelay.sender.relay import OutboxRelay, RelayConfig
from tests.support.database import Database
from tests.support.ledger import assert_ledger_consistent
from tests.support.receiver import OPENING, Receiver
from tests.support.scripted_receiver import scripted_receiver
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
