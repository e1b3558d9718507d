"""Database trouble short of an outage — a table locked, a statement timeout, no connection to spare — is a
503 with Retry-After within the lock timeout, health says what the writers can do, and nothing is lost."""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import sqlalchemy as sa

from creditrelay.receiver import webhooks
from creditrelay.receiver.app import create_app
from creditrelay.schema.database import make_engine
from tests.support.database import Database, conflicting_show_warnings
from tests.support.receiver import OPENING, add_user, settings_for
from tests.support.server import serving
from tests.support.signing import encode, seed_headers, usage_event


@contextmanager
def webhook_logs_blocked(database: Database) -> Iterator[None]:
    """Another session holds what every delivery needs: SQLite's write lock, a MySQL table lock on
    ``webhook_logs``, a PostgreSQL ``ACCESS EXCLUSIVE`` lock on it."""
    if database.kind == "sqlite":
        holder = sqlite3.connect(str(database.url.database), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    with database.engine.connect() as connection:
        if database.kind == "mysql":
            connection.exec_driver_sql("LOCK TABLES webhook_logs WRITE")
        else:
            connection.exec_driver_sql("LOCK TABLE webhook_logs IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            if database.kind == "mysql":
                connection.exec_driver_sql("UNLOCK TABLES")
            connection.rollback()


def post(client: httpx.Client, event_id: str) -> httpx.Response:
    body = encode(usage_event(event_id, cost=40))
    return client.post("/api/webhooks/events", content=body, headers=seed_headers(body))


def test_a_blocked_table_is_a_503_within_the_lock_timeout_and_health_follows(database: Database) -> None:
    """While deliveries' table is locked elsewhere, an event is answered 503 with Retry-After once the lock
    timeout (and its one retry) passed — not after MySQL's default of a day — and health is 503 too;
    afterwards the same event is charged once and health is 200 again."""
    user_id = add_user(database.engine)
    engine = make_engine(database.url, lock_timeout=0.5)
    app = create_app(settings_for(database), engine)
    try:
        with serving(app) as url, httpx.Client(base_url=url, timeout=20) as client:
            with webhook_logs_blocked(database):
                reply = post(client, "evt-blocked")
                assert reply.status_code == 503
                assert reply.headers["retry-after"] == "5"
                health = client.get("/api/webhooks/health")
                assert health.status_code == 503, health.text
            assert client.get("/api/webhooks/health").status_code == 200
            retried = post(client, "evt-blocked")
            assert retried.status_code == 200, retried.text
            assert retried.json()["duplicate"] is False
    finally:
        engine.dispose()
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=user_id) == OPENING - 40


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_statement_timeout_is_a_503_not_a_500(database: Database) -> None:
    """PostgreSQL cancels a delivery's statement (statement_timeout) while the user's row is locked
    elsewhere: 503 with Retry-After (the database's trouble, not the event's), and the event is charged
    once when sent again."""
    user_id = add_user(database.engine)
    name = database.url.database
    with database.engine.connect() as admin:
        admin.execute(sa.text(f'ALTER DATABASE "{name}" SET statement_timeout = 300'))
        admin.commit()
    engine = make_engine(database.url)
    try:
        app = create_app(settings_for(database), engine)
        with serving(app) as url, httpx.Client(base_url=url, timeout=20) as client:
            with database.engine.connect() as holder:
                holder.execute(sa.text("UPDATE users SET balance = balance WHERE id = :id"), {"id": user_id})
                reply = post(client, "evt-timeout")
                holder.rollback()
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"] == "5"
            assert post(client, "evt-timeout").status_code == 200
    finally:
        engine.dispose()
        with database.engine.connect() as admin:
            admin.execute(sa.text(f'ALTER DATABASE "{name}" RESET statement_timeout'))
            admin.commit()
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=user_id) == OPENING - 40


@pytest.mark.parametrize("database", ["mysql", "postgresql"], indirect=True)  # SQLite opens no connections
def test_health_answers_from_the_writers_when_no_connection_is_left(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection the engine may open is taken (as when the server's max_connections is full) while
    the writer holds its own: health probes on the writer's connection and says 200, and events are
    charged."""
    monkeypatch.setattr(webhooks, "HEALTH_FRESH_SECONDS", 0.0)  # always probe, however recent the last commit
    add_user(database.engine)
    engine = make_engine(database.url, pool_size=1, pool_timeout=0.5)  # two connections at most
    app = create_app(settings_for(database), engine)
    try:
        with serving(app) as url, httpx.Client(base_url=url, timeout=20) as client:
            assert post(client, "evt-first").status_code == 200  # the writer has its connection
            with engine.connect():  # the last one the engine may open
                health = client.get("/api/webhooks/health")
                assert health.status_code == 200, health.text
                assert post(client, "evt-second").status_code == 200
    finally:
        engine.dispose()


@pytest.mark.parametrize("database", ["mysql"], indirect=True)  # SHOW WARNINGS after an INSERT IGNORE: MySQL's
def test_a_conflict_raised_by_the_drivers_own_call_is_a_503_never_a_500(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Galera certification conflict that keeps surfacing from SHOW WARNINGS (pymysql's own call, outside
    SQLAlchemy) through every retry: 503 with Retry-After, as for any deadlock still there after the
    retries; once it stops, the same event is answered as the duplicate it is."""
    user_id = add_user(database.engine)
    conflicting = True
    conflicting_show_warnings(monkeypatch, lambda: conflicting)
    engine = make_engine(database.url)
    try:
        app = create_app(settings_for(database), engine)
        with serving(app) as url, httpx.Client(base_url=url, timeout=20) as client:
            first = encode(usage_event("evt-first", cost=40, request_id="req-1"))
            again = encode(usage_event("evt-again", cost=40, request_id="req-1"))  # the same usage: a skipped row
            assert client.post("/api/webhooks/events", content=first, headers=seed_headers(first)).status_code == 200
            reply = client.post("/api/webhooks/events", content=again, headers=seed_headers(again))
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"] == "5"
            conflicting = False
            reply = client.post("/api/webhooks/events", content=again, headers=seed_headers(again))
            assert reply.status_code == 200, reply.text
            assert reply.json()["duplicate"] is True
    finally:
        engine.dispose()
    assert database.scalar("SELECT balance FROM users WHERE id = :id", id=user_id) == OPENING - 40
