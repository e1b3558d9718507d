"""billing/admin.py's and billing/usage_report.py's figures on every database (the day grouping is SQL each
database spells)."""

import threading
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.billing import admin
from creditrelay.billing.deliveries import record_deliveries
from creditrelay.billing.usage_report import usage_report
from creditrelay.schema.database import make_engine
from creditrelay.schema.tables import webhook_logs
from creditrelay.schema.transactions import run_transaction
from creditrelay.schema.wire import parse_event
from tests.support.database import Database
from tests.support.ledger import in_transaction
from tests.support.receiver import add_user
from tests.support.signing import encode, usage_event

NOW = datetime(2026, 5, 10, 12, 0, 0)


def test_usage_by_model_and_day_of_charge(database: Database) -> None:
    """Credits add up per model (largest first) and per UTC day of their charge, within the range: a
    usage stamped 40 days ago but charged today is today's; sold and used per day; the top spender."""
    add_user(database.engine)
    stamp = int((NOW - datetime(1970, 1, 1)).total_seconds())
    gpt4o = usage_event("a", cost=10, timestamp=stamp - 86400)
    gpt4o["data"]["model"] = "gpt-4o"
    yesterday = [gpt4o]
    today = [usage_event("b", cost=5, timestamp=stamp), usage_event("old", cost=7, timestamp=stamp - 40 * 86400)]
    for events, at in ((yesterday, NOW - timedelta(days=1)), (today, NOW)):
        in_transaction(database, lambda c, e=events, a=at: record_deliveries(c, [parse_event(encode(x)) for x in e], a))  # type: ignore[misc]
    found = in_transaction(database, lambda c: usage_report(c, date(2026, 5, 9), date(2026, 5, 10)))
    assert found.by_model == [("gpt-4", 12), ("gpt-4o", 10)]
    assert found.by_day_and_model == {"gpt-4": [0, 12], "gpt-4o": [10, 0]}
    assert (found.credits, found.usages, found.tokens) == (22, 3, 450)
    assert (found.sold, found.used) == ([0, 0], [10, 12])
    assert [(s.email, s.credits) for s in found.top_spenders] == [("alice@example.com", 22)]
    earlier = in_transaction(database, lambda c: usage_report(c, date(2026, 3, 1), date(2026, 4, 1)))
    assert earlier.credits == 0  # the opening balance was charged at no time in this range either
    assert earlier.top_spenders == []


def test_usage_sums_are_exact_past_bigint(database: Database) -> None:
    """Three usages of 2^62 credits (written by hand: no path of ours takes so much) add up to 3 * 2^62 in
    the usage report, on SQLite too, where SUM would raise "integer overflow"."""
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
        database.execute(
            "INSERT INTO credit_transactions (userId, type, amount, balance, reference, usageRecordId, createdAt)"
            " SELECT :user, 'usage', 0, 0, :reference, id, :now FROM usage_records WHERE usageKey = :key",
            key=f"evt:{i}",
            reference=f"evt:{i}",
            user=user_id,
            now=NOW,
        )
    found = in_transaction(database, lambda c: usage_report(c, NOW.date(), NOW.date()))
    assert found.by_model == [("gpt-4", 3 * 2**62)]
    assert found.top_spenders[0].credits == 3 * 2**62


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
