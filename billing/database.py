"""Engines for the two supported databases, and the one place their differences are spelled out.

SQLite (embedded default): WAL journal, ``synchronous=FULL`` so a commit is on disk before it returns,
foreign keys on, and every transaction ``BEGIN IMMEDIATE`` so writers queue on the busy timeout instead
of failing on a lock upgrade. MySQL/MariaDB through pymysql: ``READ COMMITTED`` (no gap locks, locking
reads see the latest commit), UTC sessions, utf8mb4, stale pooled connections replaced.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from tenacity import Retrying, nap, retry_if_exception, stop_after_attempt, wait_random_exponential

T = TypeVar("T")

# MySQL errors after which the whole transaction may simply run again: deadlock, lock wait timeout,
# and the connection errors that leave a commit's fate unknown (the constraints make a re-run harmless).
_MYSQL_RETRYABLE = {1213, 1205, 2006, 2013}
_MYSQL_CONNECTION_LOST = {2003, 2006, 2013, 2055}


class DatabaseUnavailable(Exception):
    """The database did not answer (down, unreachable, locked past the timeout); nothing was written."""


def make_engine(url: URL | str, *, busy_timeout_ms: int = 5000, pool_size: int = 8) -> Engine:
    url = sa.make_url(url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout_ms)
    return sa.create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=3600,
        connect_args={"charset": "utf8mb4", "init_command": "SET time_zone = '+00:00'", "connect_timeout": 5},
    )


def _sqlite_engine(url: URL, busy_timeout_ms: int) -> Engine:
    if url.database and url.database != ":memory:":
        from pathlib import Path

        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def insert_ignoring_duplicates(table: sa.Table, dialect_name: str) -> sa.Insert:
    """An INSERT that skips rows whose unique keys already exist; ``rowcount`` counts the rows written."""
    if dialect_name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return mysql.insert(table).prefix_with("IGNORE")


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, DBAPIError) and error.orig is not None and error.orig.args:
        return error.orig.args[0] in _MYSQL_RETRYABLE
    return False


def is_unavailable(error: BaseException) -> bool:
    """Connection-level failures and timeouts: the database, not our statement, is the problem."""
    if isinstance(error, PoolTimeoutError | InterfaceError):
        return True
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def run_transaction(
    engine: Engine,
    work: Callable[[Connection], T],
    *,
    attempts: int = 5,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Run ``work`` in one transaction, commit it, and run it again on a deadlock or a lost connection.

    ``work`` must be idempotent by the database's constraints (billing's is). A database that stays out of
    reach becomes ``DatabaseUnavailable``; any other error propagates untouched.
    """
    retrying = Retrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.01, max=0.5),
        reraise=True,
        sleep=sleep or nap.sleep,
    )
    try:
        for attempt in retrying:
            with attempt, engine.begin() as connection:
                return work(connection)
    except (OperationalError, InterfaceError, PoolTimeoutError) as error:
        if is_unavailable(error):
            raise DatabaseUnavailable(
                str(error.orig) if isinstance(error, DBAPIError) else str(error)
            ) from error
        raise
    raise AssertionError("unreachable: tenacity reraises the last error")


def ping(engine: Engine) -> None:
    """Raise ``DatabaseUnavailable`` unless the database takes a write transaction now."""
    run_transaction(engine, lambda connection: connection.execute(sa.text("SELECT 1")), attempts=1)
