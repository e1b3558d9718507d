"""Billing tests call the ledger directly inside transactions they own."""

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection

from billing.database import run_transaction
from tests.support.database import Database

T = TypeVar("T")
NOW = datetime(2026, 1, 2, 3, 4, 5)


def in_transaction(database: Database, work: Callable[[Connection], T]) -> T:
    return run_transaction(database.engine, work)
