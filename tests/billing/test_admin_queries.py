"""billing/admin.py's usage figures on every database (the day grouping is SQL each database spells)."""

import threading
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing import admin
from creditrelay.billing.admin import usage_by_day, usage_by_model
from creditrelay.billing.deliveries import record_deliveries
from creditrelay.schema.database import make_engine
from creditrelay.schema.tables import webhook_logs
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.ledger import in_transaction
from tests.support.receiver import add_user
from tests.support.signing import encode, usage_event

NOW = datetime(2026, 5, 10, 12, 0, 0)


def test_usage_by_model_and_day(database: Database) -> None:
    """Credits add up per model (largest first) and per UTC day (oldest first), within the window."""
    add_user(database.engine)
    stamp = int((NOW - datetime(1970, 1, 1)).total_seconds())
    events = [
        usage_event("a", cost=10, timestamp=stamp - 86400)
        | {"data": usage_event("a", cost=10)["data"] | {"model": "gpt-4o"}},
        usage_event("b", cost=5, timestamp=stamp),
        usage_event("c", cost=7, timestamp=stamp),
        usage_event("old", cost=99, timestamp=stamp - 40 * 86400),
    ]
    in_transaction(database, lambda c: record_deliveries(c, [parse_event(encode(e)) for e in events], NOW))
    since = NOW - timedelta(days=30)
    assert in_transaction(database, lambda c: usage_by_model(c, since)) == [("gpt-4", 12), ("gpt-4o", 10)]
    assert in_transaction(database, lambda c: usage_by_day(c, since)) == [("2026-05-09", 10), ("2026-05-10", 12)]


def test_usage_sums_are_exact_past_bigint(database: Database) -> None:
    """Three usages of 2^62 credits (written by hand: no path of ours takes so much) add up to 3 * 2^62 in
    the usage charts, on SQLite too, where SUM would raise "integer overflow"."""
    user_id = add_user(database.engine)
    for i in range(3):
        database.execute(
            "INSERT INTO usage_records (usageKey, userId, remoteKeyId, model, promptTokens, completionTokens,"
            " totalTokens, creditCost, source, usedAt, createdAt)"
            " VALUES (:key, :user, '1', 'gpt-4', 0, 0, 0, :cost, 'webhook', :now, :now)",
            key=f"evt:{i}",
            user=user_id,
            cost=2**62,
            now=NOW,
        )
    since = NOW - timedelta(days=1)
    assert in_transaction(database, lambda c: usage_by_model(c, since)) == [("gpt-4", 3 * 2**62)]
    assert [credits for _, credits in in_transaction(database, lambda c: usage_by_day(c, since))] == [3 * 2**62]


def test_stats_count_each_clock_minute_of_the_last_hour_by_status(database: Database) -> None:
    """Logs 0, 5, 59 and 61 minutes old and one in the current minute: each in its minute's bucket (the
    current minute last), the one past the hour left out, the counts by status adding up."""
    now = datetime(2026, 5, 10, 12, 30, 40)
    ages = {"m0": 0, "m5": 5, "m59": 59, "m61": 61}
    rows = [
        {"eventId": name, "eventType": "usage", "payload": "{}", "payloadHash": "h",
         "status": "failed" if name == "m5" else "processed", "createdAt": now - timedelta(minutes=minutes)}
        for name, minutes in ages.items()
    ]  # fmt: skip
    with database.engine.begin() as connection:
        connection.execute(webhook_logs.insert(), rows)
    stats = in_transaction(database, lambda c: admin.stats(c, now))
    hour = stats.last_hour
    assert hour.since == datetime(2026, 5, 10, 11, 31)
    assert hour.by_status == {"processed": 2, "failed": 1, "ignored": 0}
    assert [i for i, n in enumerate(hour.per_minute) if n] == [0, 54, 59]
    assert hour.by_minute["failed"][54] == 1
    assert stats.failed_total == 1


def test_a_read_only_transaction_does_not_hold_up_writers(database: Database) -> None:
    """While an admin read is open, a webhook's write transaction commits (SQLite: the read took no write
    lock; before, every transaction began IMMEDIATE)."""
    reading, done = threading.Event(), threading.Event()

    def slow_read(connection: Connection) -> int:
        count = int(connection.execute(sa.select(sa.func.count()).select_from(webhook_logs)).scalar_one())
        reading.set()
        done.wait(10)
        return count

    reader = threading.Thread(target=lambda: run_transaction(database.engine, slow_read, read_only=True))
    reader.start()
    try:
        assert reading.wait(10)
        impatient = make_engine(database.url, busy_timeout_ms=200)
        try:
            add_user(impatient, "writer@example.com")
        finally:
            impatient.dispose()
    finally:
        done.set()
        reader.join(10)
    assert database.count("users") == 1
