"""Seed 004's monitoring SQL (section 6.1) runs unchanged against our MySQL schema, and its PostgreSQL
version, as docs/postgresql.md writes it, against our PostgreSQL schema."""

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.database import Database
from tests.support.receiver import Receiver
from tests.support.signing import encode, seed_headers, usage_event

SEED_QUERIES = [
    """SELECT status, COUNT(*) as count, MAX(createdAt) as latest
FROM webhook_logs
WHERE createdAt > DATE_SUB(NOW(), INTERVAL 1 HOUR)
GROUP BY status""",
    """SELECT eventId, errorMsg, createdAt
FROM webhook_logs
WHERE status = 'failed'
ORDER BY createdAt DESC
LIMIT 20""",
    """SELECT u.email, ct.type, ct.amount, ct.balance, ct.createdAt
FROM credit_transactions ct
JOIN users u ON u.id = ct.userId
ORDER BY ct.createdAt DESC
LIMIT 100""",
]


@pytest.mark.parametrize("database", ["mysql"], indirect=True)  # the seed's SQL is MySQL's (DATE_SUB, NOW)
def test_seed_monitoring_queries_run_unchanged_on_mysql(receiver: Receiver, database: Database) -> None:
    """The three monitoring queries answer what an operator expects after one charge and one failure."""
    for event in (usage_event("evt-ok"), usage_event("evt-fail", key="unlinked")):
        body = encode(event)
        receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
    with database.engine.connect() as connection:
        stats, failed, audit = (list(connection.execute(sa.text(q))) for q in SEED_QUERIES)
    assert sorted((row[0], row[1]) for row in stats) == [("failed", 1), ("processed", 1)]
    assert [row.eventId for row in failed] == ["evt-fail"]
    assert [(row.email, row.type, row.amount, row.balance) for row in audit] == [
        ("alice@example.com", "usage", -15, 985),
        ("alice@example.com", "opening", 1000, 1000),
    ]


def postgres_queries() -> list[str]:
    """The SQL blocks of docs/postgresql.md's section on seed 004's queries, in order."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "postgresql.md").read_text()
    section = page.split("## The monitoring queries")[1].split("\n## ")[0]
    return re.findall(r"```sql\n(.*?)```", section, re.DOTALL)


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_the_monitoring_queries_in_postgresqls_words_answer_the_same(receiver: Receiver, database: Database) -> None:
    """The documented PostgreSQL queries answer as the seed's do on MySQL, and the documented cleanup
    deletes the processed logs older than 7 days only."""
    stats_sql, failed_sql, audit_sql, cleanup_sql = postgres_queries()
    for event in (usage_event("evt-ok"), usage_event("evt-fail", key="unlinked")):
        body = encode(event)
        receiver.client.post("/api/webhooks/events", content=body, headers=seed_headers(body))
    with database.engine.connect() as connection:
        stats, failed, audit = (list(connection.execute(sa.text(q))) for q in (stats_sql, failed_sql, audit_sql))
    assert sorted((row[0], row[1]) for row in stats) == [("failed", 1), ("processed", 1)]
    assert [row.eventId for row in failed] == ["evt-fail"]
    assert [(row.email, row.type, row.amount, row.balance) for row in audit] == [
        ("alice@example.com", "usage", -15, 985),
        ("alice@example.com", "opening", 1000, 1000),
    ]
    database.execute(
        "INSERT INTO webhook_logs (eventId, eventType, payload, payloadHash, status, createdAt)"
        " VALUES ('old', 'usage', '{}', 'h', 'processed', :at)",
        at=datetime.utcnow() - timedelta(days=8),
    )
    with database.engine.begin() as connection:
        connection.execute(sa.text(cleanup_sql))
    assert sorted(e for (e,) in database.rows("SELECT eventId FROM webhook_logs")) == ["evt-fail", "evt-ok"]
