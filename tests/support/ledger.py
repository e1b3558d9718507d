"""Helpers for tests that work on the ledger directly: transactions they own, threads started together,
the MySQL insert path forced on any database, a user with a key, and the ledger's invariants checked."""

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

import pytest
from sqlalchemy import Connection

from creditrelay.billing.accounts import NewUser, create_user, link_key
from creditrelay.schema import inserts
from creditrelay.schema.transactions import run_transaction
from tests.support.database import Database

T = TypeVar("T")
B = TypeVar("B")
NOW = datetime(2026, 1, 2, 3, 4, 5)


def in_transaction(database: Database, work: Callable[[Connection], T]) -> T:
    return run_transaction(database.engine, work)


def concurrently(database: Database, batches: Sequence[B], work: Callable[[Connection, B], T]) -> list[T]:
    """Each batch in its own thread and transaction, all started together; the results in batch order.
    An error in any thread fails the test."""
    start = threading.Barrier(len(batches))
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(index: int, batch: B) -> None:
        start.wait()
        try:
            results[index] = in_transaction(database, lambda c: work(c, batch))
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run, args=item) for item in enumerate(batches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return [results[i] for i in range(len(batches))]


def force_row_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Billing as on MySQL, where inserts only count the rows they wrote (no ``RETURNING``)."""
    monkeypatch.setattr(inserts, "returns_inserted", lambda _dialect: False)


def make_user(database: Database, email: str, credits: int, *keys: str) -> int:
    """A user with an opening balance and the gateway keys that bill them; their id."""

    def work(connection: Connection) -> int:
        user = create_user(connection, NewUser(email, opening_credits=credits), NOW)
        for key in keys:
            link_key(connection, key, user.id, NOW)
        return user.id

    return in_transaction(database, work)


def assert_ledger_consistent(database: Database) -> None:
    """Balances equal the sums of transactions and the newest balance; usage and usage txns are 1:1."""
    mismatched = database.rows(
        "SELECT u.id FROM users u WHERE u.balance <> (SELECT COALESCE(SUM(amount), 0)"
        " FROM credit_transactions t WHERE t.userId = u.id)"
        " OR u.balance <> COALESCE((SELECT t.balance FROM credit_transactions t WHERE t.userId = u.id"
        " ORDER BY t.id DESC LIMIT 1), 0)"
    )
    assert mismatched == []
    assert database.count("usage_records") == database.count("credit_transactions", "type = 'usage'")
    orphans = database.count(
        "usage_records r", "NOT EXISTS (SELECT 1 FROM credit_transactions t WHERE t.usageRecordId = r.id)"
    )
    assert orphans == 0
