"""Relays sharing one outbox (one per gateway host, on a shared MySQL or PostgreSQL): each claims under a
name of its own, a starting relay frees only its own predecessor's claims, and together they deliver each
event once."""

import asyncio
import json
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from creditrelay.schema.database import utc
from creditrelay.schema.signing import WebhookSecret
from creditrelay.sender.delivery import Signer
from creditrelay.sender.outbox import DELIVERED, PENDING, Outbox, outbox_events
from creditrelay.sender.relay import OutboxRelay, RelayConfig
from tests.support.database import Database
from tests.support.outbox import LEASE, T0, events
from tests.support.scripted_receiver import ScriptedReceiver, scripted_receiver
from tests.support.signing import SECRET


@pytest.fixture
def outbox(database: Database) -> Outbox:
    return Outbox(database.engine)


def relay(outbox: Outbox, receiver: ScriptedReceiver, name: str) -> OutboxRelay:
    # one event per request (the scripted receiver has no batch endpoint); no purge: the events are dated T0
    config = RelayConfig(url=receiver.url, name=name, batch=False, concurrency=4, poll_interval=0.01,
                         retention=None, clock=lambda: T0.timestamp() + 1)  # fmt: skip
    return OutboxRelay(outbox, Signer(WebhookSecret.parse(SECRET)), config)


async def run_until(relays: list[OutboxRelay], *, seconds: float) -> None:
    """Run the relays side by side until ``seconds`` have passed or every event is delivered."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in relays]
    outbox = relays[0].outbox
    for _ in range(int(seconds / 0.02)):
        if await asyncio.to_thread(lambda: outbox.counts()[PENDING]) == 0:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*tasks)


def delivered_ids(receiver: ScriptedReceiver) -> Counter[str]:
    return Counter(json.loads(seen.body)["eventId"] for seen in receiver.seen)


def test_a_relay_frees_only_the_claims_left_under_its_own_name(outbox: Outbox) -> None:
    """Two relays hold claims; one restarts (its predecessor killed): its own events are due again at
    once, the other relay's stay claimed until their lease runs out."""
    outbox.enqueue(events(4), T0)
    mine = outbox.claim_due(T0, 2, LEASE, "host-a:4100")
    theirs = outbox.claim_due(T0, 2, LEASE, "host-b:4100")
    assert outbox.release_claims("host-a:4100") == 2
    again = outbox.claim_due(T0 + timedelta(seconds=1), 10, LEASE, "host-a:4100")
    assert sorted(e.event_id for e in again) == sorted(e.event_id for e in mine)
    assert outbox.release_claims("host-c:4100") == 0  # a new relay: nothing of its own to free
    later = outbox.claim_due(T0 + LEASE + timedelta(seconds=1), 10, LEASE, "host-c:4100")
    assert sorted(e.event_id for e in later) == sorted(e.event_id for e in [*theirs, *mine])


def test_a_starting_relay_leaves_a_running_relays_events_alone(outbox: Outbox) -> None:
    """Relay B starts while relay A has events in flight: B delivers only what is free, and A's events are
    not delivered a second time by B; A restarted under its name delivers its own at once."""
    outbox.enqueue(events(6), T0)
    in_flight = {e.event_id for e in outbox.claim_due(T0, 3, LEASE, "relay-a")}
    with scripted_receiver() as receiver:
        asyncio.run(run_until([relay(outbox, receiver, "relay-b")], seconds=1.0))
        first = delivered_ids(receiver)
        assert set(first) == {f"e{i:03}" for i in range(6)} - in_flight
        asyncio.run(run_until([relay(outbox, receiver, "relay-a")], seconds=10))
        delivered = delivered_ids(receiver)
    assert delivered == Counter({f"e{i:03}": 1 for i in range(6)})
    assert outbox.counts()[DELIVERED] == 6


def test_two_relays_on_one_outbox_deliver_each_event_once(
    outbox: Outbox, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two relays drain one outbox at the same time: every event is delivered, each exactly once, and both
    took a share."""
    outbox.enqueue(events(300), T0)
    claimers: Counter[str] = Counter()
    real_claim = outbox.claim_due

    def claim_due(*args: object) -> list[object]:
        claimed = real_claim(*args)  # type: ignore[arg-type]
        claimers[str(args[3])] += len(claimed)
        return list(claimed)

    monkeypatch.setattr(outbox, "claim_due", claim_due)
    with scripted_receiver() as receiver:
        asyncio.run(run_until([relay(outbox, receiver, "relay-a"), relay(outbox, receiver, "relay-b")], seconds=60))
    delivered = delivered_ids(receiver)
    assert delivered == Counter({f"e{i:03}": 1 for i in range(300)})
    assert outbox.counts()[DELIVERED] == 300
    assert set(claimers) == {"relay-a", "relay-b"}  # both did part of the work
    with database.engine.connect() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).where(outbox_events.c.claimedBy.is_not(None))).scalar() == 0
        )


def test_an_outbox_made_before_claims_named_their_relay_gains_the_column(database: Database) -> None:
    """An outbox whose events table lacks ``claimedBy`` (made by an earlier version) gets it when opened,
    keeps its events, and they are claimed under a name."""
    quote = database.engine.dialect.identifier_preparer.quote
    with database.engine.begin() as connection:
        connection.exec_driver_sql(f"ALTER TABLE outbox_events DROP COLUMN {quote('claimedBy')}")
    outbox = Outbox(database.engine)
    outbox.enqueue(events(1), T0)
    [claimed] = outbox.claim_due(utc(T0.timestamp()), 1, LEASE, "relay-a")
    assert outbox.release_claims("relay-a") == 1
    assert claimed.event_id == "e000"
