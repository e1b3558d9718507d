"""A deadlock the database reports is retried: two transactions locking two rows in opposite orders (the
lock order billing never breaks, broken here on purpose) both commit, the victim on its second try."""

import threading
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection

from creditrelay.schema.inserts import insert_new
from creditrelay.schema.tables import users, webhook_logs
from creditrelay.schema.transactions import run_transaction
from tests.support.database import Database, certification_conflict, conflicting_show_warnings
from tests.support.ledger import NOW


@pytest.mark.parametrize("database", ["mysql", "postgresql"], indirect=True)  # servers that detect deadlocks
def test_a_real_deadlock_is_retried_until_both_commit(database: Database) -> None:
    with database.engine.begin() as connection:
        rows = [{"email": f"d{i}@example.com", "balance": 0, "openPollUsages": 0, "createdAt": NOW, "updatedAt": NOW}
                for i in range(2)]  # fmt: skip
        connection.execute(users.insert(), rows)
    ids = [int(i) for (i,) in database.rows("SELECT id FROM users WHERE email LIKE 'd%' ORDER BY id")]
    both_hold_one = threading.Barrier(2, timeout=30)
    attempts = {"first": 0, "second": 0}

    def locking(name: str, order: list[int]) -> None:
        def work(connection: Connection) -> None:
            attempts[name] += 1
            for step, user_id in enumerate(order):
                connection.execute(users.update().where(users.c.id == user_id).values(balance=users.c.balance + 1))
                if step == 0 and attempts[name] == 1:
                    both_hold_one.wait()  # each holds its first row and now asks for the other's

        run_transaction(database.engine, work)

    threads = [
        threading.Thread(target=locking, args=("first", ids)),
        threading.Thread(target=locking, args=("second", list(reversed(ids)))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    balances = database.rows("SELECT balance FROM users WHERE id IN (:a, :b) ORDER BY id", a=ids[0], b=ids[1])
    assert [int(b) for (b,) in balances] == [2, 2]  # both committed, each once
    first, again = sorted(attempts.values())
    # the database chose a victim, which ran again (on a loaded machine its rerun may also wait out the lock
    # timeout while the winner commits, and run a third time: retried all the same)
    assert first == 1
    assert again >= 2


def _log_row(event_id: str) -> dict[str, Any]:
    return {"eventId": event_id, "eventType": "usage", "payload": "{}", "payloadHash": "h", "status": "processed",
            "errorMsg": None, "processedAt": NOW, "createdAt": NOW}  # fmt: skip


@pytest.mark.parametrize("database", ["mysql"], indirect=True)  # SHOW WARNINGS after an INSERT IGNORE: MySQL's
def test_a_deadlock_raised_by_the_drivers_own_call_is_retried(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Galera certification conflict can surface from SHOW WARNINGS, which runs on pymysql's connection
    outside SQLAlchemy (a raw ``pymysql.err.OperationalError``): the transaction runs again and commits,
    as for a deadlock any other statement reports."""
    conflicts = iter([True])
    conflicting_show_warnings(monkeypatch, lambda: next(conflicts, False))
    tries = 0

    def work(connection: Connection) -> set[Any]:
        nonlocal tries
        tries += 1
        insert_new(connection, webhook_logs, [_log_row("e-dup")], "eventId")
        return insert_new(connection, webhook_logs, [_log_row("e-dup"), _log_row("e-new")], "eventId")  # warns

    assert run_transaction(database.engine, work, sleep=lambda _: None) == {"e-new"}
    assert tries == 2
    assert database.count("webhook_logs") == 2


@pytest.mark.parametrize("database", ["mysql", "postgresql"], indirect=True)
def test_a_deadlock_any_call_on_the_drivers_connection_raises_is_retried(database: Database) -> None:
    """Whatever talks to the driver's connection outside SQLAlchemy, its raw deadlock (pymysql's 1213,
    psycopg's 40P01) is taken for the deadlock it is: the transaction runs again and commits."""
    deadlock = certification_conflict() if database.kind == "mysql" else psycopg.errors.DeadlockDetected("deadlock")
    tries = 0

    def work(connection: Connection) -> None:
        nonlocal tries
        tries += 1
        insert_new(connection, webhook_logs, [_log_row(f"e-{tries}")], "eventId")
        if tries == 1:
            raise deadlock

    run_transaction(database.engine, work, sleep=lambda _: None)
    assert tries == 2
    assert [e for (e,) in database.rows("SELECT eventId FROM webhook_logs")] == ["e-2"]  # the first rolled back
