"""Billing tests call the ledger directly inside transactions they own."""

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

import pytest
from sqlalchemy import Connection

from creditrelay.billing import deliveries, rows
from creditrelay.schema.database import run_transaction
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


@pytest.fixture(params=["returning", "row_count"])
def insert_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of learning which rows an insert wrote: ``RETURNING`` (SQLite, MariaDB) and, as on MySQL,
    row counts with savepoints and ids read back (forced here on the databases that could return)."""
    if request.param == "row_count":
        force_row_counts(monkeypatch)
    return str(request.param)


def force_row_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Billing as on MySQL, where inserts only count the rows they wrote (no ``RETURNING``)."""
    for module in (rows, deliveries):
        monkeypatch.setattr(module, "returns_inserted", lambda _dialect: False)
