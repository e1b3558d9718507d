"""A deadlock the database reports is retried: two transactions locking two rows in opposite orders (the
lock order billing never breaks, broken here on purpose) both commit, the victim on its second try."""

import threading

import pytest
from sqlalchemy import Connection

from creditrelay.schema.tables import users
from creditrelay.schema.transactions import run_transaction
from tests.support.database import Database
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
    assert sorted(attempts.values()) == [1, 2]  # the database chose a victim, which ran again
