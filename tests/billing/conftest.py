"""Billing tests call the ledger directly inside transactions they own."""

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

import pytest
from sqlalchemy import Connection

from billing import deliveries, ledger
from billing.database import run_transaction
from tests.support.database import Database

T = TypeVar("T")
NOW = datetime(2026, 1, 2, 3, 4, 5)


def in_transaction(database: Database, work: Callable[[Connection], T]) -> T:
    return run_transaction(database.engine, work)


@pytest.fixture(params=["returning", "row_count"])
def insert_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of learning which rows an insert wrote: ``RETURNING`` (SQLite, MariaDB) and, as on MySQL,
    row counts with savepoints and ids read back (forced here on the databases that could return)."""
    if request.param == "row_count":
        for module in (ledger, deliveries):
            monkeypatch.setattr(module, "returns_inserted", lambda _dialect: False)
    return str(request.param)
