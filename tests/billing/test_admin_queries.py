"""billing/admin.py's usage figures on both databases (the day grouping is SQL each database spells)."""

from datetime import datetime, timedelta

from billing.admin import usage_by_day, usage_by_model
from billing.deliveries import record_deliveries
from schema.wire import parse_event
from tests.billing.conftest import in_transaction
from tests.support.database import Database
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
