"""The bounds of money: every amount is an integer number of credits within these, and sums stay exact.

One change of balance (a usage's cost, a top-up, a deduction, a polled quota in credits) is at most
``MAX_AMOUNT``; a balance never leaves ``[-MAX_BALANCE, MAX_BALANCE]``. Both are far inside BIGINT, so a
balance, a change and the sum of ten thousand changes at the maximum can never overflow a column.

Sums over many rows: MySQL and PostgreSQL add BIGINT columns as exact decimals; SQLite's ``SUM`` raises
"integer overflow" past 2^63, so there a column is summed as two halves that cannot overflow (the high
bits and the low 32 bits), put back together in Python.
"""

from typing import Any

import sqlalchemy as sa

MAX_AMOUNT = 10**12  # credits in one change
MAX_BALANCE = 10**15  # credits a balance may hold (or owe)
_LOW = 2**32


def in_range(balance: int) -> bool:
    return -MAX_BALANCE <= balance <= MAX_BALANCE


def exact_sum(column: Any, dialect_name: str, name: str) -> list[sa.ColumnElement[Any]]:
    """Columns that sum ``column`` exactly (labelled ``name…``); ``summed`` turns a row's values into the
    total."""
    if dialect_name != "sqlite":
        return [sa.func.coalesce(sa.func.sum(column), 0).label(name)]
    high = sa.func.coalesce(sa.func.sum(column.op(">>")(32)), 0).label(f"{name}_high")
    low = sa.func.coalesce(sa.func.sum(column.op("&")(_LOW - 1)), 0).label(f"{name}_low")
    return [high, low]


def summed(values: Any) -> int:
    """The total from ``exact_sum``'s values (one exact value, or SQLite's two halves)."""
    parts = [int(value) for value in values]
    return parts[0] if len(parts) == 1 else parts[0] * _LOW + parts[1]
