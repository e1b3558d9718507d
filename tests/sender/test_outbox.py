"""sender/outbox.py and sender/relay.py on SQLite, MySQL and PostgreSQL: durable, ordered, leased, settled by
schedule."""

import asyncio
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event

from creditrelay.schema.database import make_engine
from creditrelay.schema.signing import WebhookSecret
from creditrelay.sender.delivery import Attempt, Signer, Verdict
from creditrelay.sender.outbox import DEAD, DELIVERED, PENDING, Outbox, OutboxEvent
from creditrelay.sender.relay import OutboxRelay, RelayConfig, settle
from tests.support.database import Database
from tests.support.outbox import LEASE, T0, events
from tests.support.scripted_receiver import Reply, scripted_receiver
from tests.support.signing import SECRET


@pytest.fixture
def outbox(database: Database) -> Outbox:
    """An outbox in the test's ledger database, which holds its tables (the ledger's alerts use them), emptied
    before each test like the rest."""
    return Outbox(database.engine)


def test_enqueue_is_idempotent_by_event_id(outbox: Outbox) -> None:
    """Enqueueing an event id twice keeps one event, and the first body."""
    assert outbox.enqueue(events(3), T0) == 3
    assert outbox.enqueue(events(4), T0) == 1
    assert outbox.counts() == {PENDING: 4, DELIVERED: 0, DEAD: 0}


def test_claims_are_oldest_due_first_and_leased(outbox: Outbox) -> None:
    """Due events come oldest first; a claimed event is not handed out again until its lease ends or is freed."""
    outbox.enqueue(events(1, start=5), T0 + timedelta(seconds=5))
    outbox.enqueue(events(2), T0)
    first = outbox.claim_due(T0 + timedelta(seconds=10), 2, LEASE, "relay-a")
    assert [e.event_id for e in first] == ["e000", "e001"]
    assert [e.event_id for e in outbox.claim_due(T0 + timedelta(seconds=10), 10, LEASE, "relay-a")] == ["e005"]
    assert outbox.claim_due(T0 + timedelta(seconds=11), 10, LEASE, "relay-a") == []
    assert len(outbox.claim_due(T0 + timedelta(seconds=71), 10, LEASE, "relay-a")) == 3
    assert outbox.release_claims("relay-a") == 3
    assert len(outbox.claim_due(T0 + timedelta(seconds=72), 10, LEASE, "relay-a")) == 3


def _attempt(event_id: str, verdict: Verdict, status: int | None, retry_after: float | None = None) -> Attempt:
    return Attempt(event_id, T0.timestamp(), verdict, status, 12, "snippet", retry_after)


def test_settle_follows_the_schedule_then_gives_up() -> None:
    """Retryable failures wait the schedule's next delay (or a longer Retry-After); past its end, dead."""
    config = RelayConfig(url="http://x", schedule=(5, 300), clock=lambda: 1000.0)
    event = OutboxEvent("e1", b"{}", attempts=0)
    retry = settle(event, _attempt("e1", Verdict.RETRY, 503), config)
    assert (retry.status, retry.next_attempt_at) == (PENDING, datetime(1970, 1, 1, 0, 16, 45))
    later = settle(OutboxEvent("e1", b"{}", 1), _attempt("e1", Verdict.RETRY, 429, retry_after=900), config)
    assert later.next_attempt_at == datetime(1970, 1, 1, 0, 31, 40)
    assert settle(OutboxEvent("e1", b"{}", 2), _attempt("e1", Verdict.RETRY, None), config).status == DEAD
    assert settle(event, _attempt("e1", Verdict.REFUSED, 422), config).status == DEAD
    assert settle(event, _attempt("e1", Verdict.DELIVERED, 200), config).status == DELIVERED


def test_dead_events_can_be_requeued_and_old_delivered_ones_purged(outbox: Outbox) -> None:
    """`outbox retry` revives dead events; `outbox purge` removes delivered ones and never pending ones."""
    outbox.enqueue(events(3), T0)
    claimed = outbox.claim_due(T0, 10, LEASE)
    outbox.settle(
        [
            settle(claimed[0], _attempt("e000", Verdict.REFUSED, 422), RelayConfig("u")),
            settle(claimed[1], _attempt("e001", Verdict.DELIVERED, 200), RelayConfig("u")),
        ]
    )
    assert outbox.counts() == {PENDING: 1, DELIVERED: 1, DEAD: 1}
    assert outbox.list_events(DEAD)[0]["lastError"] == "422: snippet"
    assert outbox.requeue(None, T0) == 1
    assert outbox.purge([DELIVERED], T0 + timedelta(days=1), pause=0) == 1
    with pytest.raises(ValueError, match="never purged"):
        outbox.purge([PENDING], T0)
    assert outbox.counts() == {PENDING: 2, DELIVERED: 0, DEAD: 0}
    assert [a["verdict"] for a in outbox.attempts_of("e000")] == ["refused"]


def test_outbox_drains_once_the_receiver_comes_back(outbox: Outbox) -> None:
    """Receiver down: the first pass tries every event once, then the relay backs off as one — a single
    event asks each time, the others keep their attempts; receiver up: the outbox empties."""
    with scripted_receiver() as probe:
        url = probe.url
    port = int(url.split(":")[2].split("/")[0])
    outbox.enqueue(events(20), T0)
    now = [T0.timestamp() + 1]
    config = RelayConfig(url=url, schedule=(0,) * 10, clock=lambda: now[0])
    relay = OutboxRelay(outbox, Signer(WebhookSecret.parse(SECRET)), config)

    async def drain(passes: int) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(passes):
                await relay.drain_once(client)
                now[0] += 120  # past the breaker's wait

    asyncio.run(drain(3))
    assert outbox.counts()[PENDING] == 20
    tries = [len(outbox.attempts_of(f"e{i:03}")) for i in range(20)]
    assert sum(tries) == 20 + 1 + 1  # not 60: no attempt storm while the receiver is away
    assert relay.breaker_delay == 4.0
    with scripted_receiver(Reply(503), port=port) as receiver:  # back, though its first answer is a 503
        asyncio.run(drain(4))
    assert outbox.counts() == {PENDING: 0, DELIVERED: 20, DEAD: 0}
    assert relay.breaker_delay == 0
    assert len({s.headers["webhook-id"] for s in receiver.seen}) == 20
    attempts = outbox.attempts_of(receiver.seen[0].headers["webhook-id"])
    assert [a["verdict"] for a in attempts][-1] == "delivered"
    assert all(a["latencyMs"] >= 0 for a in attempts)


def test_the_relay_outlives_an_unreadable_answer_and_a_failing_pass(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver's answer that cannot be decoded is a failed attempt, retried; a pass that raises
    something nobody expected is counted; the relay keeps going and delivers."""
    outbox.enqueue(events(2), T0)
    garbled = Reply(200, headers={"Content-Encoding": "gzip"})  # a JSON body that says it is gzip
    with scripted_receiver(garbled, garbled) as receiver:
        config = RelayConfig(  # no purge: the events are dated T0, past any retention by the real clock
            url=receiver.url, schedule=(0,) * 5, poll_interval=0.01, breaker_max=0.05, retention=None
        )
        relay = OutboxRelay(outbox, Signer(WebhookSecret.parse(SECRET)), config)
        real_claim = outbox.claim_due
        failures = [RuntimeError("a bug in one pass")]

        def claim_once_failing(*args: object) -> list[OutboxEvent]:
            if failures:
                raise failures.pop()
            return real_claim(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(outbox, "claim_due", claim_once_failing)

        async def run() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(relay.run(stop))
            for _ in range(500):
                if outbox.counts()[DELIVERED] == 2 or task.done():
                    break
                await asyncio.sleep(0.01)
            stop.set()
            await task

        asyncio.run(run())
    assert relay.failed_passes == 1
    assert outbox.counts() == {PENDING: 0, DELIVERED: 2, DEAD: 0}
    verdicts = [a["verdict"] for e in ("e000", "e001") for a in outbox.attempts_of(e)]
    assert verdicts.count("retry") == 2
    assert "DecodingError" in str([a["snippet"] for a in outbox.attempts_of("e000")])


def test_no_statement_names_more_ids_than_the_database_takes(tmp_path: Path) -> None:
    """A SQLite that takes fewer parameters per statement than a pass claims, an operator requeues or a purge
    deletes: each still works (the ids go in bounded groups, as PostgreSQL's 65,535 needs them)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    event.listen(engine, "connect", lambda driver, _: driver.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 600))
    outbox = Outbox(engine)
    outbox.enqueue(events(2000), T0)
    claimed = outbox.claim_due(T0, 2000, LEASE)
    assert len(claimed) == 2000
    refused = [settle(e, _attempt(e.event_id, Verdict.REFUSED, 422), RelayConfig("u")) for e in claimed]
    outbox.settle(refused)
    assert outbox.requeue([e.event_id for e in claimed], T0) == 2000
    delivered = [settle(e, _attempt(e.event_id, Verdict.DELIVERED, 200), RelayConfig("u")) for e in claimed]
    outbox.settle(delivered)
    assert outbox.purge([DELIVERED], T0 + timedelta(days=1), chunk=256, pause=0) == 2000
    assert outbox.counts() == {PENDING: 0, DELIVERED: 0, DEAD: 0}
