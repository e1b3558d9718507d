"""Which of a batch's rows an insert wrote: the one difference between the databases that the ledger's
algorithm has to know about, named here.

Every row is inserted skipping those whose unique key exists (``ON CONFLICT DO NOTHING`` / ``INSERT
IGNORE``), and the rows written are the new ones — never decided by reading first.

- SQLite 3.35+, MariaDB 10.5+ and PostgreSQL say which rows they wrote (``INSERT … RETURNING``): one
  multi-row statement, exact, always.
- MySQL only counts them. An *exact* insert then takes a savepoint, and when the count falls short rolls
  back to it and inserts row by row, each count saying whether that row was new. An *optimistic* one
  (``exact=False``) sends the rows in one statement and no savepoint — two round trips fewer — and when the
  count falls short says so (``None``): the caller's transaction is then rolled back and run again exactly.
  A count falls short only when another transaction wrote one of the keys first, which is rare.
"""

from collections.abc import Sequence
from typing import Any, Literal, overload

import sqlalchemy as sa
from sqlalchemy import Connection

from creditrelay.schema.database import insert_ignoring_duplicates
from creditrelay.schema.statements import execute_many, fetch_in, insert_returning, returns_inserted, savepoint


@overload
def insert_new(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: str, *, exact: Literal[True] = True
) -> set[Any]: ...
@overload
def insert_new(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: str, *, exact: bool
) -> set[Any] | None: ...
def insert_new(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: str, *, exact: bool = True
) -> set[Any] | None:
    """Insert ``rows`` skipping those whose unique ``key`` exists; the keys actually inserted. ``None`` only
    from an optimistic insert (``exact=False``) on a database that counts, when some key existed."""
    if not rows:
        return set()
    if returns_inserted(connection.dialect):
        return {row[0] for row in insert_returning(connection, table, rows, [key])}

    def build(dialect: str) -> sa.Insert:
        return insert_ignoring_duplicates(table, dialect)

    cache_key = ("insert_new", table.name)
    if not exact:
        return {row[key] for row in rows} if execute_many(connection, cache_key, build, rows) == len(rows) else None
    with savepoint(connection, "insert_new") as rollback:
        if execute_many(connection, cache_key, build, rows) == len(rows):
            return {row[key] for row in rows}
        rollback()
    return {row[key] for row in rows if execute_many(connection, cache_key, build, [row]) == 1}


@overload
def insert_new_ids(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: str, *, exact: Literal[True] = True
) -> dict[Any, int]: ...
@overload
def insert_new_ids(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: str, *, exact: bool
) -> dict[Any, int] | None: ...
def insert_new_ids(
    connection: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], key: str, *, exact: bool = True
) -> dict[Any, int] | None:
    """``insert_new``, with the id of each row written (from ``RETURNING``, else read back)."""
    if not rows:
        return {}
    if returns_inserted(connection.dialect):
        return {row[0]: row[1] for row in insert_returning(connection, table, rows, [key, "id"])}
    written = insert_new(connection, table, rows, key, exact=exact)
    if written is None:
        return None
    found = fetch_in(
        connection,
        ("inserted_ids", table.name),
        lambda keys: sa.select(table.c[key], table.c.id).where(table.c[key].in_(keys)),
        sorted(written),
    )
    return dict(found)
