"""A SQLite outbox's disk space: SQLite keeps the pages of deleted rows in its file (and reuses them) unless
told to give them back. A new outbox is made with ``auto_vacuum=INCREMENTAL``, so that after a purge the
relay can give the free pages back a few at a time (``PRAGMA incremental_vacuum``) without holding up the
gateway's writes; ``VACUUM`` rewrites the whole file at once, and is what converts an outbox made before.

MySQL and PostgreSQL need none of this: they reuse a deleted row's space for new rows on their own.
"""

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy import Engine

INCREMENTAL = 2  # what PRAGMA auto_vacuum answers for incremental


def use_incremental_vacuum(engine: Engine) -> None:
    """Make a new SQLite database one that can give free pages back (``auto_vacuum=INCREMENTAL``).

    The mode is fixed when the file's first page is written, which the engine's WAL pragma has done by
    the time a connection is handed out, so a database with no table yet is vacuumed into it (instant
    while empty). One with tables keeps its mode until ``vacuum``."""
    if engine.dialect.name != "sqlite":
        return
    with _driver(engine) as driver:
        new = driver.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None
        if new and _pragma(driver, "auto_vacuum") != INCREMENTAL:
            driver.execute("PRAGMA auto_vacuum=INCREMENTAL")
            driver.execute("VACUUM")


def reclaim_space(engine: Engine, pages: int) -> int:
    """Give up to ``pages`` free pages back to the file system, in one short write transaction; how many
    went. When none are left, the WAL is checkpointed (passively: it never waits for a writer) so that the
    file shrinks now. 0 on another database, or on a SQLite one without incremental auto-vacuum."""
    if engine.dialect.name != "sqlite":
        return 0
    with _driver(engine) as driver:
        if _pragma(driver, "auto_vacuum") != INCREMENTAL:
            return 0
        before = _pragma(driver, "freelist_count")
        if not before:
            return 0
        # sqlite3's execute() steps a statement once, and this pragma frees one page per step:
        # executescript() runs it to the end, as its own transaction
        driver.executescript(f"PRAGMA incremental_vacuum({int(pages)})")
        left = _pragma(driver, "freelist_count")
        if not left:
            driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return max(0, before - left)


def vacuum(engine: Engine) -> None:
    """Rewrite a SQLite database at the size of what it holds (``VACUUM``), with incremental auto-vacuum
    from then on. Writers wait (and may time out) until it ends, and it needs room for a copy of what is
    kept (the engine keeps temporary data in memory, and the copy passes through the WAL). ``ValueError``
    for any other database, which reuses the space itself."""
    if engine.dialect.name != "sqlite":
        raise ValueError(f"VACUUM is for SQLite; {engine.dialect.name} reuses the space of deleted rows itself")
    with _driver(engine) as driver:
        driver.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect through the VACUUM
        driver.execute("VACUUM")
        driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # VACUUM wrote the whole file to the WAL


def file_bytes(engine: Engine) -> int | None:
    """The size of a SQLite database (its pages, without the WAL); None for any other database."""
    if engine.dialect.name != "sqlite":
        return None
    with _driver(engine) as driver:
        return _pragma(driver, "page_count") * _pragma(driver, "page_size")


@contextmanager
def _driver(engine: Engine) -> Iterator[sqlite3.Connection]:
    """A pooled connection's sqlite3 driver, outside any transaction (``VACUUM`` and the vacuum pragmas run
    outside one, and the engine opens each transaction it starts with ``BEGIN IMMEDIATE``); its errors
    raised as SQLAlchemy's, like every other statement's."""
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        try:
            yield driver
        except sqlite3.Error as error:
            raise sa.exc.DBAPIError.instance(None, None, error, sqlite3.Error) from error


def _pragma(driver: sqlite3.Connection, name: str) -> int:
    return int(driver.execute(f"PRAGMA {name}").fetchone()[0])
