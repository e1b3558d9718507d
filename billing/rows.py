"""The statements the ledger is made of: find key owners, lock users in id order, insert rows once by their
unique key (learning which were new), write balances. Rules live in ``billing.ledger``; these only say
what the database did.

Which rows are new is decided by inserting them with ``ON CONFLICT DO NOTHING`` / ``INSERT IGNORE`` and
counting (or returning) what was written — never by reading first.
"""

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.database import insert_ignoring_duplicates
from creditrelay.schema.statements import (
    execute_many,
    fetch_in,
    insert_returning,
    padded,
    placeholders,
    returns_inserted,
    run_cached,
    savepoint,
)
from creditrelay.schema.tables import api_keys, users


class Shortfall(Exception):
    """A strict insert wrote fewer rows than it was given: some keys already existed."""


def key_owners(connection: Connection, remote_key_ids: Iterable[str]) -> dict[str, int]:
    """The user behind each known gateway key."""
    rows = fetch_in(
        connection,
        "key_owners",
        lambda keys: sa.select(api_keys.c.remoteKeyId, api_keys.c.userId).where(api_keys.c.remoteKeyId.in_(keys)),
        sorted(set(remote_key_ids)),
    )
    return {key: user for key, user in rows}


def lock_balances(connection: Connection, user_ids: Collection[int]) -> dict[int, int]:
    """Lock the users' rows in id order (the one order every transaction uses) and read their balances."""
    rows = fetch_in(
        connection,
        "lock_balances",
        lambda ids: (
            sa.select(users.c.id, users.c.balance).where(users.c.id.in_(ids)).order_by(users.c.id).with_for_update()
        ),
        sorted(user_ids),
    )
    return {user_id: balance for user_id, balance in rows}


def lock_users(connection: Connection, user_ids: Collection[int]) -> dict[int, tuple[int, int]]:
    """``lock_balances``, with each user's count of open polled usages (``billing.matching``) beside the
    balance: what charging usage needs, in the same statement."""
    rows = fetch_in(
        connection,
        "lock_users",
        lambda ids: (
            sa.select(users.c.id, users.c.balance, users.c.openPollUsages)
            .where(users.c.id.in_(ids))
            .order_by(users.c.id)
            .with_for_update()
        ),
        sorted(user_ids),
    )
    return {user_id: (balance, waiting) for user_id, balance, waiting in rows}


def insert_new(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: str, *, strict: bool = False
) -> set[Any]:
    """Insert ``rows`` skipping those whose unique ``key`` exists; return the keys actually inserted.

    Where the database returns what an insert wrote (SQLite, MariaDB), one multi-row ``INSERT … RETURNING``
    says exactly which rows were new. Otherwise (MySQL) one multi-row statement first; when it wrote fewer
    rows than given, it is rolled back to a savepoint and the rows are inserted one by one, each
    statement's row count telling whether that row was new. A ``strict`` insert that writes fewer rows than
    it was given raises ``Shortfall`` instead (its caller rolls back further up).
    """
    if not rows:
        return set()
    if returns_inserted(connection.dialect):
        return set(_written(connection, table, rows, [key], strict))

    def build(dialect: str) -> sa.Insert:
        return insert_ignoring_duplicates(table, dialect)

    cache_key = ("insert_new", table.name)
    if strict:
        if execute_many(connection, cache_key, build, rows) != len(rows):
            raise Shortfall(table.name)
        return {row[key] for row in rows}
    with savepoint(connection, "insert_new") as rollback:
        if execute_many(connection, cache_key, build, rows) == len(rows):
            return {row[key] for row in rows}
        rollback()
    return {row[key] for row in rows if execute_many(connection, cache_key, build, [row]) == 1}


def insert_new_ids(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: str, *, strict: bool = False
) -> dict[Any, int]:
    """``insert_new``, with the id of each row written (from ``RETURNING``, else read back)."""
    if not rows:
        return {}
    if returns_inserted(connection.dialect):
        return dict(_written(connection, table, rows, [key, "id"], strict))
    written = insert_new(connection, table, rows, key, strict=strict)
    found = fetch_in(
        connection,
        ("inserted_ids", table.name),
        lambda keys: sa.select(table.c[key], table.c.id).where(table.c[key].in_(keys)),
        sorted(written),
    )
    return dict(found)


def _written(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], returning: list[str], strict: bool
) -> list[Any]:
    written = insert_returning(connection, table, rows, returning)
    if strict and len(written) != len(rows):
        raise Shortfall(table.name)
    return [row[0] if len(returning) == 1 else tuple(row) for row in written]


def set_balances(connection: Connection, balances: Mapping[int, int], now: datetime) -> None:
    """Write new balances in one statement (``CASE id WHEN … THEN …``), users in id order."""
    if not balances:
        return
    ids = padded(sorted(balances))  # a repeated user id repeats the same CASE arm

    def build() -> sa.Update:
        new = sa.case(
            {
                sa.bindparam(f"u{i}", type_=sa.BigInteger): sa.bindparam(f"b{i}", type_=sa.BigInteger)
                for i in range(len(ids))
            },
            value=users.c.id,
        )
        ids_in = users.c.id.in_(placeholders("w", len(ids)))
        return (
            users.update()
            .where(ids_in)
            .values(balance=new, updatedAt=sa.bindparam("now", type_=users.c.updatedAt.type))
        )

    values = [value for user_id in ids for value in (user_id, balances[user_id], user_id)]
    params: dict[str, Any] = dict(zip(_balance_names(len(ids)), values, strict=True)) | {"now": now}
    run_cached(connection, ("set_balances", len(ids)), build, params)


@cache
def _balance_names(count: int) -> tuple[str, ...]:
    """``set_balances``' parameter names for ``count`` users: each user's id, new balance, id again."""
    return tuple(name for i in range(count) for name in (f"u{i}", f"b{i}", f"w{i}"))
