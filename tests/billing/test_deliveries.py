"""billing/deliveries.py: webhook log claims, conflicts, retries of failed events, late replays."""

from typing import Any

import pytest
from sqlalchemy import Connection

from creditrelay.billing.accounts import link_key
from creditrelay.billing.deliveries import DeliveryStatus, record_deliveries
from creditrelay.schema import statements as statements_module
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.ledger import NOW, assert_ledger_consistent, concurrently, in_transaction, make_user
from tests.support.signing import encode, usage_event

pytestmark = pytest.mark.usefixtures("insert_path")  # every test on both insert paths: RETURNING, and row counts


def test_same_event_twice_in_one_batch_is_charged_once(database: Database) -> None:
    """An event id repeated in a batch: the first charges, the same body is a duplicate, another conflicts."""
    make_user(database, "alice@example.com", 100, "1")
    batch = [
        parse_event(encode(usage_event("e1", cost=10))),
        parse_event(encode(usage_event("e1", cost=10))),
        parse_event(encode(usage_event("e1", cost=11))),
    ]
    outcomes = in_transaction(database, lambda c: record_deliveries(c, batch, NOW))
    assert [o.status for o in outcomes] == [
        DeliveryStatus.CHARGED,
        DeliveryStatus.DUPLICATE,
        DeliveryStatus.CONFLICT,
    ]
    assert database.scalar("SELECT balance FROM users") == 90


def test_replay_after_log_cleanup_is_still_a_duplicate(database: Database) -> None:
    """Usage records outlive webhook logs, so an old event replayed after cleanup charges nothing."""
    make_user(database, "alice@example.com", 100, "1")
    event = parse_event(encode(usage_event("e1", cost=10)))
    in_transaction(database, lambda c: record_deliveries(c, [event], NOW))
    with database.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM webhook_logs")
    [outcome] = in_transaction(database, lambda c: record_deliveries(c, [event], NOW))
    assert outcome.status is DeliveryStatus.DUPLICATE
    assert database.scalar("SELECT balance FROM users") == 90


def test_failed_event_is_retried_when_redelivered(database: Database) -> None:
    """A failed (unknown key) log row is billed on the next delivery once the key is linked."""
    alice = make_user(database, "alice@example.com", 100, "1")
    event = parse_event(encode(usage_event("e1", key="k9", cost=10)))
    [failed] = in_transaction(database, lambda c: record_deliveries(c, [event], NOW))
    assert failed.status is DeliveryStatus.UNBILLABLE
    in_transaction(database, lambda c: link_key(c, "k9", alice, NOW))
    [charged] = in_transaction(database, lambda c: record_deliveries(c, [event], NOW))
    assert charged.status is DeliveryStatus.CHARGED
    assert charged.balance == 90


def test_concurrent_overlapping_deliveries_record_and_charge_each_event_once(database: Database) -> None:
    """Six threads deliver overlapping batches of the same 60 events (as two writers, or two instances,
    meet the same redeliveries): each event is charged once, answered ``charged`` exactly once, and its
    log row is written once with its final status."""
    users = [make_user(database, f"u{i}@example.com", 10_000, f"k{i}") for i in range(3)]
    events = [parse_event(encode(usage_event(f"c{i:02}", key=f"k{i % 3}", cost=1 + i % 4))) for i in range(60)]
    batches = [[events[(t * 11 + j) % 60] for j in range(30)] for t in range(6)]
    results = concurrently(database, batches, lambda c, batch: record_deliveries(c, batch, NOW))
    outcomes = [o.status for done in results for o in done]
    sent = {e.event_id for b in batches for e in b}
    assert outcomes.count(DeliveryStatus.CHARGED) == len(sent)
    assert outcomes.count(DeliveryStatus.DUPLICATE) == sum(len(b) for b in batches) - len(sent)
    assert database.rows("SELECT DISTINCT status FROM webhook_logs") == [("processed",)]
    assert database.count("webhook_logs") == database.count("usage_records") == len(sent)
    for i, user_id in enumerate(users):
        cost = sum(1 + int(e.event_id[1:]) % 4 for e in events if e.event_id in sent and int(e.event_id[1:]) % 3 == i)
        assert database.scalar("SELECT balance FROM users WHERE id = :id", id=user_id) == 10_000 - cost
    assert_ledger_consistent(database)


def test_a_batch_of_duplicates_writes_nothing_and_takes_no_lock(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redelivered events already logged with a final status are judged from what is read: no statement
    of the batch writes or locks a row (the seed's duplicate detection is a read), on both insert paths."""
    make_user(database, "alice@example.com", 100, "1")
    batch = [parse_event(encode(usage_event(f"e{i}", cost=1))) for i in range(3)]
    in_transaction(database, lambda c: record_deliveries(c, batch, NOW))
    statements: list[str] = []
    run = statements_module._run

    def recording(connection: Connection, sql: str, params: Any, *, many: bool = False) -> Any:
        statements.append(sql)
        return run(connection, sql, params, many=many)

    monkeypatch.setattr(statements_module, "_run", recording)
    outcomes = in_transaction(database, lambda c: record_deliveries(c, batch, NOW))
    assert {o.status for o in outcomes} == {DeliveryStatus.DUPLICATE}
    reads = [sql for sql in statements if not sql.startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
    assert reads, "the batch was read"
    assert all(sql.lstrip().upper().startswith("SELECT") and "FOR UPDATE" not in sql for sql in reads), reads
    assert database.scalar("SELECT balance FROM users") == 97
