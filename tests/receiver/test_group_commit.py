"""Group commit keeps exactly-once: duplicates inside a batch, a poison event, a database error mid-batch."""

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DataError, OperationalError

from creditrelay.billing import deliveries
from creditrelay.billing.deliveries import DeliveryOutcome, DeliveryStatus, record_deliveries
from creditrelay.receiver.app import create_app
from creditrelay.receiver.group_commit import GroupCommitter
from creditrelay.receiver.ingest import Ingestor
from creditrelay.schema.database import utc
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import Event, parse_event
from tests.support.database import Database
from tests.support.ledger import assert_ledger_consistent, force_row_counts
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event


def events(*ids: str, cost: int = 3) -> list[Event]:
    return [parse_event(encode(usage_event(event_id, cost=cost))) for event_id in ids]


def submit_all(committer: GroupCommitter, batch: Sequence[Event]) -> list[DeliveryOutcome | BaseException]:
    async def run() -> list[DeliveryOutcome | BaseException]:
        try:
            return await asyncio.gather(*(committer.submit(e) for e in batch), return_exceptions=True)
        finally:
            await committer.close()

    return asyncio.run(run())


def test_duplicates_inside_one_batch_are_charged_once(database: Database) -> None:
    """30 requests arriving together, 10 distinct events three times each: one batch, 10 charges."""
    add_user(database.engine)
    ingestor = Ingestor(database.engine, lambda: 1_800_000_000.0)
    sizes: list[int] = []

    def apply(batch: Sequence[Event]) -> list[DeliveryOutcome]:
        sizes.append(len(batch))
        return ingestor.ingest_batch(batch)

    batch = events(*(f"evt-{i % 10}" for i in range(30)))
    outcomes = submit_all(GroupCommitter(apply), batch)
    assert sizes == [30]
    statuses = [o.status for o in outcomes if isinstance(o, DeliveryOutcome)]
    assert statuses.count(DeliveryStatus.CHARGED) == 10
    assert statuses.count(DeliveryStatus.DUPLICATE) == 20
    assert database.scalar("SELECT balance FROM users") == OPENING - 30
    assert_ledger_consistent(database)


def test_a_poison_event_fails_alone(database: Database) -> None:
    """The database refuses a batch because of one event: the others are applied one by one, once each."""
    add_user(database.engine)
    ingestor = Ingestor(database.engine, lambda: 1_800_000_000.0)

    def apply(batch: Sequence[Event]) -> list[DeliveryOutcome]:
        if any(e.event_id == "poison" for e in batch):

            def work(connection: sa.Connection) -> None:
                record_deliveries(connection, batch, utc(1_800_000_000))  # written, then rolled back
                raise DataError("INSERT …", {}, Exception("value out of range for the poison event"))

            run_transaction(database.engine, work)
        return ingestor.ingest_batch(batch)

    outcomes = submit_all(GroupCommitter(apply), events("a", "b", "poison", "c"))
    assert [type(o).__name__ for o in outcomes] == [
        "DeliveryOutcome",
        "DeliveryOutcome",
        "DataError",
        "DeliveryOutcome",
    ]
    assert database.scalar("SELECT COUNT(*) FROM usage_records") == 3
    assert database.rows("SELECT eventId FROM webhook_logs ORDER BY eventId") == [("a",), ("b",), ("c",)]
    assert database.scalar("SELECT balance FROM users") == OPENING - 9
    assert_ledger_consistent(database)


def test_a_database_error_mid_batch_is_retried_without_double_charge(database: Database) -> None:
    """The connection is lost after the batch's writes, before the commit: rolled back, run again, once."""
    add_user(database.engine)
    clock = lambda: 1_800_000_000.0  # noqa: E731
    ingestor = Ingestor(database.engine, clock)
    failures = [1]

    @sa.event.listens_for(database.engine, "commit")
    def lose_connection_once(_connection: sa.Connection) -> None:
        if failures:
            failures.pop()
            raise OperationalError("COMMIT", {}, Exception(2013, "Lost connection to MySQL server during query"))

    try:
        outcomes = submit_all(GroupCommitter(ingestor.ingest_batch), events(*(f"e{i}" for i in range(20))))
    finally:
        sa.event.remove(database.engine, "commit", lose_connection_once)
    assert failures == []
    assert [o.status for o in outcomes if isinstance(o, DeliveryOutcome)] == [DeliveryStatus.CHARGED] * 20
    assert database.scalar("SELECT COUNT(*) FROM usage_records") == 20
    assert database.scalar("SELECT balance FROM users") == OPENING - 60
    assert_ledger_consistent(database)


def test_a_refused_event_is_answered_in_json_and_not_charged(database: Database) -> None:
    """Over HTTP, the poison event gets a JSON 500 saying nothing was charged; the next event is fine."""
    add_user(database.engine)
    app = create_app(settings_for(database), database.engine)
    committer: GroupCommitter = app.state.webhooks.ingestor.committer
    real = committer.apply_batch

    def refuse_poison(batch: Sequence[Event]) -> list[DeliveryOutcome]:
        if any(e.event_id == "poison" for e in batch):
            raise DataError("INSERT …", {}, Exception("refused"))
        return real(batch)

    committer.apply_batch = refuse_poison
    with serving(app) as url, httpx.Client(base_url=url) as client:
        poison, fine = encode(usage_event("poison")), encode(usage_event("fine"))
        refused = client.post("/api/webhooks/events", content=poison, headers=seed_headers(poison))
        accepted = client.post("/api/webhooks/events", content=fine, headers=seed_headers(fine))
    assert refused.status_code == 500
    assert refused.json() == {
        "success": False,
        "message": "The database refused this request; nothing was recorded or charged",
    }
    assert accepted.status_code == 200
    assert database.rows("SELECT eventId FROM webhook_logs") == [("fine",)]


def test_a_delivery_that_races_another_is_sorted_out_in_a_second_transaction(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where inserts only count rows (MySQL): the writer's optimistic read misses a row another delivery
    committed just after it (simulated), its insert comes up short, the transaction is rolled back whole,
    and the exact retry finds the duplicate — one charge, nothing half-written."""
    force_row_counts(monkeypatch)
    add_user(database.engine)
    ingestor = Ingestor(database.engine, lambda: 1_800_000_000.0)
    [first] = ingestor.ingest_batch(events("raced"))
    assert first.status is DeliveryStatus.CHARGED
    real_known = deliveries._known
    stale = [True]

    def read_before_the_other_commit(connection: sa.Connection, batch: Sequence[Event]) -> Any:
        stored, owners, paired = real_known(connection, batch)
        if stale:
            stale.pop()
            return {}, owners, paired
        return stored, owners, paired

    monkeypatch.setattr(deliveries, "_known", read_before_the_other_commit)
    outcomes = ingestor.ingest_batch(events("raced", "fresh"))
    assert stale == []
    assert [o.status for o in outcomes] == [DeliveryStatus.DUPLICATE, DeliveryStatus.CHARGED]
    assert database.scalar("SELECT COUNT(*) FROM usage_records") == 2
    assert database.scalar("SELECT balance FROM users") == OPENING - 6
    assert_ledger_consistent(database)


def test_the_events_shortcut_answers_like_the_rest_of_the_app(database: Database) -> None:
    """POST /api/webhooks/events skips Starlette's router; other methods on that path still get the
    router's JSON 405, and an unexpected error in the endpoint is a 500 after which the server goes on."""
    add_user(database.engine)
    app = create_app(settings_for(database), database.engine)
    committer: GroupCommitter = app.state.webhooks.ingestor.committer
    real = committer.apply_batch
    broken = [True]

    def fail_once(batch: Sequence[Event]) -> list[DeliveryOutcome]:
        if broken:
            broken.pop()
            raise RuntimeError("a bug")
        return real(batch)

    committer.apply_batch = fail_once
    body = encode(usage_event("after-the-bug", cost=3))
    with serving(app) as url, httpx.Client(base_url=url) as client:
        not_allowed = client.get("/api/webhooks/events")
        failed = client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
        retried = client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
    assert not_allowed.status_code == 405
    assert not_allowed.json() == {"success": False, "message": "Method Not Allowed"}
    assert failed.status_code == 500
    assert retried.status_code == 200
    assert retried.json()["duplicate"] is False
    assert database.scalar("SELECT balance FROM users") == OPENING - 3
    assert_ledger_consistent(database)
