"""billing/cleanup.py: old processed and ignored logs go; failed and recent logs, usage and money stay; credit
API tokens go once their window has passed."""

from datetime import timedelta

from creditrelay.billing.cleanup import delete_expired_tokens, delete_old_logs
from creditrelay.billing.deliveries import record_deliveries
from creditrelay.schema.tables import credit_tokens, webhook_logs
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.ledger import NOW, in_transaction
from tests.support.receiver import add_user
from tests.support.signing import encode, usage_event


def deliver(database: Database, body: dict[str, object], days_ago: int) -> None:
    event = parse_event(encode(body))
    in_transaction(database, lambda c: record_deliveries(c, [event], NOW - timedelta(days=days_ago)))


def test_cleanup_keeps_failed_and_recent_logs_and_every_charge(database: Database) -> None:
    """Only processed/ignored logs older than the cut-off are deleted, in batches; replays stay duplicates."""
    add_user(database.engine)
    for i in range(25):
        deliver(database, usage_event(f"old-{i}", cost=1), days_ago=10)
    deliver(database, {"eventId": "old-ping", "eventType": "ping", "timestamp": 1}, days_ago=10)
    deliver(database, usage_event("old-failed", key="nobody"), days_ago=10)
    deliver(database, usage_event("recent", cost=1), days_ago=1)
    before = database.snapshot()

    assert delete_old_logs(database.engine, NOW - timedelta(days=7), batch=10) == 26
    assert database.rows("SELECT eventId FROM webhook_logs ORDER BY eventId") == [("old-failed",), ("recent",)]
    after = database.snapshot()
    assert after["balances"] == before["balances"]
    assert after["counts"]["usage_records"] == before["counts"]["usage_records"] == 26
    assert after["counts"]["credit_transactions"] == before["counts"]["credit_transactions"]


def test_cleanup_walks_batches_that_share_a_timestamp(database: Database) -> None:
    """A group-commit batch writes many logs with one createdAt: batches cut through such a run lose none
    and delete nothing younger, for both cleaned statuses."""
    old = NOW - timedelta(days=10)
    rows = [
        {"eventId": f"e{i:03}", "eventType": "usage" if i % 3 else "ping", "payload": "{}", "payloadHash": "h",
         "status": "processed" if i % 3 else "ignored", "createdAt": old + timedelta(seconds=i // 25)}
        for i in range(100)
    ]  # fmt: skip
    rows.append(dict(rows[0], eventId="young", createdAt=NOW))
    with database.engine.begin() as connection:
        connection.execute(webhook_logs.insert(), rows)
    told: list[int] = []
    assert delete_old_logs(database.engine, NOW - timedelta(days=7), batch=10, progress=told.append) == 100
    assert sum(told) == 100
    assert database.rows("SELECT eventId FROM webhook_logs") == [("young",)]


def test_cleanup_deletes_the_tokens_whose_window_has_passed(database: Database) -> None:
    """Tokens whose window ended over an hour ago are deleted, in batches; tokens still in their window, or
    only just past it, stay (a request checked a moment ago may still be on its way to the database)."""
    expiries = [NOW - timedelta(hours=2, seconds=i) for i in range(25)]
    expiries += [NOW - timedelta(minutes=5), NOW, NOW + timedelta(minutes=4)]
    rows = [
        {"token": f"{i:064x}", "reference": f"sync-token:{i:064x}", "expiresAt": at} for i, at in enumerate(expiries)
    ]
    with database.engine.begin() as connection:
        connection.execute(credit_tokens.insert(), rows)
    assert delete_expired_tokens(database.engine, NOW, batch=10) == 25
    assert database.rows("SELECT token FROM credit_tokens ORDER BY token") == [(f"{i:064x}",) for i in (25, 26, 27)]
