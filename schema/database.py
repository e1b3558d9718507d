"""Engines for the two supported databases, and the one place their differences are spelled out.

SQLite (the embedded default): WAL journal, ``synchronous=FULL`` so a commit is on disk before it returns,
foreign keys on, and every transaction ``BEGIN IMMEDIATE`` so writers queue on the busy timeout instead
of failing on a lock upgrade. MySQL/MariaDB through pymysql: ``READ COMMITTED`` (no gap locks; reads see
the latest commit), UTC sessions, utf8mb4, stale pooled connections replaced.

Billing's ledger and the sender's outbox both use these engines.
"""

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import URL

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")  # naive UTC, microseconds
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")  # a 64 KiB body does not fit MySQL's TEXT


def utc(seconds: float) -> datetime:
    """Unix seconds as the naive UTC datetime every table stores. The same value as
    ``datetime.fromtimestamp(seconds, UTC)`` without its zone, at less than half the cost (once per webhook
    event on the writer's thread)."""
    return _EPOCH + timedelta(seconds=seconds)


_EPOCH = datetime(1970, 1, 1)


# Identifiers compare byte for byte on MySQL, as they do on SQLite.
MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


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
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA temp_store=MEMORY")  # statement journals of big batches: no temp file each
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
