"""Alerts: one Standard Webhooks event per crossing, written in the crossing's transaction into the
ledger's outbox and delivered by the sender's relay; verified with the scheme's reference library."""

import asyncio
import json

import httpx
from standardwebhooks import Webhook

from creditrelay.billing.accounts import NewUser, create_user, link_key, top_up
from creditrelay.billing.deliveries import deliver
from creditrelay.billing.rules import LedgerRules
from creditrelay.schema.signing import WebhookSecret
from creditrelay.schema.wire import parse_event
from creditrelay.sender.delivery import Signer
from creditrelay.sender.outbox import Outbox
from creditrelay.sender.relay import OutboxRelay, RelayConfig
from tests.support.database import Database
from tests.support.ledger import NOW, in_transaction
from tests.support.scripted_receiver import scripted_receiver
from tests.support.signing import STANDARD_SECRET, encode, usage_event


def test_each_crossing_alerts_once_and_the_alerts_verify(database: Database) -> None:
    database.rule(LedgerRules(alerts=True, low_at=50))

    def setup(connection: object) -> int:
        alice = create_user(connection, NewUser("alice@example.com", opening_credits=100), NOW)  # type: ignore[arg-type]
        link_key(connection, "17", alice.id, NOW)  # type: ignore[arg-type]
        return alice.id

    alice = in_transaction(database, setup)
    assert database.count("outbox_events") == 0  # an opening balance crosses nothing

    def spend(event_id: str, cost: int) -> None:
        deliver(database.engine, [parse_event(encode(usage_event(event_id, cost=cost, key=17)))], NOW)

    spend("evt-1", 60)  # 40: low
    spend("evt-1", 60)  # a redelivery: nothing
    spend("evt-2", 30)  # 10: still low, nothing new
    spend("evt-3", 10)  # 0: depleted
    in_transaction(database, lambda c: top_up(c, alice, 5, "order-1", NOW))  # 5: restored
    in_transaction(database, lambda c: top_up(c, alice, 5, "order-1", NOW))  # a duplicate: nothing

    with scripted_receiver(503) as receiver:  # the first attempt fails: retried with the same webhook-id
        relay = OutboxRelay(
            Outbox(database.engine),
            Signer(WebhookSecret.parse(STANDARD_SECRET), seed=False, standard=True),
            RelayConfig(url=receiver.url, schedule=(0,)),
        )

        async def drain() -> None:
            async with httpx.AsyncClient() as client:
                while await relay.drain_once(client):
                    pass

        asyncio.run(drain())
    verifier = Webhook(STANDARD_SECRET)
    delivered = receiver.seen[1:]  # the first answer was a 503
    bodies = [verifier.verify(seen.body, seen.headers) for seen in delivered]
    assert sorted((b["type"], b["data"]["balance"], b["data"]["threshold"]) for b in bodies) == [
        ("balance.depleted", 0, 0), ("balance.low", 40, 50), ("balance.restored", 5, 0),
    ]  # fmt: skip
    assert all(b["data"]["userId"] == alice and b["data"]["email"] == "alice@example.com" for b in bodies)
    ids = [seen.headers["webhook-id"] for seen in delivered]
    assert len(set(ids)) == 3
    assert receiver.seen[0].headers["webhook-id"] in ids  # retried under the same id
    assert all("x-webhook-signature" not in seen.headers for seen in delivered)
    assert all(json.loads(seen.body)["timestamp"].endswith("Z") for seen in delivered)
    assert database.count("outbox_events", "status = 'delivered'") == 3
