"""Engines for the supported databases, and the one place their differences are spelled out.

SQLite (the embedded default): WAL journal, ``synchronous=FULL`` so a commit is on disk before it returns,
foreign keys on, and every writing transaction ``BEGIN IMMEDIATE`` so writers queue on the busy timeout
instead of failing on a lock upgrade; a transaction run ``read_only`` starts with a plain ``BEGIN`` and
never takes the write lock. MySQL/MariaDB through pymysql: ``READ COMMITTED`` (no gap locks; reads see
the latest commit), UTC sessions in strict mode (a value that does not fit is an error, never cut),
utf8mb4 with a binary NO PAD collation (identifiers compare byte for byte, trailing spaces included),
stale pooled connections replaced. PostgreSQL through psycopg 3: ``READ COMMITTED``, UTC sessions; it is
strict already (a value that does not fit is an error) and its deterministic collations tell apart any
two strings whose bytes differ.

Billing's ledger and the sender's outbox both use these engines; the transactions their callers run on
them are in ``schema.transactions``.
"""

import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL

from creditrelay.schema.errors import UnsupportedDatabase

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql")  # naive UTC, microseconds
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql")  # a 64 KiB body does not fit MySQL's TEXT


def utc(seconds: float) -> datetime:
    """Unix seconds as the naive UTC datetime every table stores. The same value as
    ``datetime.fromtimestamp(seconds, UTC)`` without its zone, at less than half the cost (once per webhook
    event on the writer's thread)."""
    return _EPOCH + timedelta(seconds=seconds)


_EPOCH = datetime(1970, 1, 1)


# Identifiers compare byte for byte on MySQL, as they do on SQLite: a binary collation that does not pad
# (``utf8mb4_bin`` is PAD SPACE: "R1 " = "R1"). MariaDB's name for it is the default here; a table created on
# MySQL 8 gets MySQL's (``register_exact_collation``).
MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_nopad_bin",
}
READ_ONLY = "creditrelay_read_only"  # an execution option: the transaction only reads (SQLite: no write lock)


def exact_collation(dialect: sa.Dialect, *, required: bool = True) -> str:
    """The binary NO PAD utf8mb4 collation of this MySQL server: MariaDB 10.2+ and MySQL 8.0+ have one.
    MySQL 5.7 has none: ``UnsupportedDatabase``, or unless ``required``, the padding ``utf8mb4_bin``."""
    version = tuple(dialect.server_version_info or ())
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    if version >= (8, 0):
        return "utf8mb4_0900_bin"
    if not required:
        return "utf8mb4_bin"
    raise UnsupportedDatabase("MySQL before 8.0 has no binary NO PAD collation: use MySQL 8.0+ or MariaDB 10.2+")


def register_exact_collation(metadata: sa.MetaData, *, required: bool = True) -> None:
    """Tables of ``metadata`` created on MySQL get that server's ``exact_collation``."""

    @event.listens_for(metadata, "before_create")
    def _collate(_target: sa.MetaData, connection: Connection, **kwargs: Any) -> None:
        if connection.dialect.name == "mysql":
            for table in kwargs.get("tables") or metadata.sorted_tables:
                table.dialect_options["mysql"]["collate"] = exact_collation(connection.dialect, required=required)


def convert_to_exact_collation(connection: Connection, tables: Sequence[str], *, required: bool = True) -> list[str]:
    """Rebuild those of ``tables`` (MySQL) whose collation is not ``exact_collation``; the ones converted.

    Safe on existing data: a NO PAD binary collation tells apart strictly more values than a PAD SPACE one,
    so no unique key can collide after the change. On MySQL the rebuild copies the table.
    """
    if connection.dialect.name != "mysql":
        return []
    wanted = exact_collation(connection.dialect, required=required)
    found = connection.execute(
        sa.text(
            "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN :names"
        ).bindparams(sa.bindparam("names", expanding=True)),
        {"names": list(tables)},
    )
    converted = sorted(name for name, collation in found if collation != wanted)
    for name in converted:
        connection.exec_driver_sql(f"ALTER TABLE `{name}` CONVERT TO CHARACTER SET utf8mb4 COLLATE {wanted}")
    return converted


def add_missing_columns(connection: Connection, table: sa.Table) -> list[str]:
    """Add to ``table``, which exists, the columns of its definition it lacks (nullable ones: rows already
    there get NULL); the names added. How a table created outside the migrations (a relay's own outbox)
    gains the columns it grew since."""
    present = {found["name"] for found in sa.inspect(connection).get_columns(table.name)}
    quote = connection.dialect.identifier_preparer.quote
    added = []
    for column in table.columns:
        if column.name in present:
            continue
        if not column.nullable:
            raise UnsupportedDatabase(f"{table.name}.{column.name} is missing and cannot be added empty")
        kind = column.type.compile(dialect=connection.dialect)
        connection.exec_driver_sql(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}")
        added.append(column.name)
    return added


# Strict: a value too long, out of range or NULL where it may not be is an error, in and out of
# transactions, whatever the server's default mode is; and all of a statement's warnings are kept.
_MYSQL_SESSION = (
    "SET time_zone = '+00:00', "
    "sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES', 'ERROR_FOR_DIVISION_BY_ZERO'), "
    "max_error_count = 65535"  # every warning of a statement can be read back (schema.statements)
)


def with_driver(url: URL) -> URL:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default for it would be psycopg2)."""
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    return url


DEFAULT_LOCK_TIMEOUT = 5.0  # seconds a statement may wait for a lock (DATABASE_LOCK_TIMEOUT)


def make_engine(
    url: URL | str,
    *,
    busy_timeout_ms: int | None = None,
    pool_size: int = 8,
    pool_timeout: float = 30.0,
    lock_timeout: float | None = None,
) -> Engine:
    """An engine on which no statement waits for a lock longer than ``lock_timeout`` seconds: SQLite's busy
    timeout, MySQL's ``innodb_lock_wait_timeout`` (rows) and ``lock_wait_timeout`` (tables, and a global read
    lock such as ``FLUSH TABLES WITH READ LOCK``), PostgreSQL's ``lock_timeout``. A wait past it is an
    error that ``run_transaction`` tries once more and then answers as the database being unavailable, so a
    blocked database is a 503 in seconds, not a request hanging for a day (MySQL's default)."""
    seconds = DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout
    url = with_driver(sa.make_url(url))
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, busy_timeout_ms if busy_timeout_ms is not None else int(seconds * 1000))
    if url.get_backend_name() == "postgresql":
        # UTC sessions (the tables hold naive UTC; nothing reads the server's clock, but a person's SQL might)
        options = f"-c TimeZone=UTC -c lock_timeout={max(1, int(seconds * 1000))}"
        connect_args: dict[str, Any] = {"connect_timeout": 5, "options": options}
    else:
        wait = max(1, round(seconds))  # MySQL takes whole seconds
        session = f"{_MYSQL_SESSION}, innodb_lock_wait_timeout = {wait}, lock_wait_timeout = {wait}"
        connect_args = {"charset": "utf8mb4", "init_command": session, "connect_timeout": 5}
    return sa.create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        pool_recycle=3600,
        connect_args=connect_args,
    )


def _sqlite_engine(url: URL, busy_timeout_ms: int) -> Engine:
    # The sqlite3 module adapts every parameter that is not exactly an int, float, str or bytearray, None
    # included; with no adapter registered for a type, each such value costs a formatted AttributeError
    # (~3,300 CPU instructions, callgrind). An adapter that answers None for None (a C method: no Python
    # frame) makes it a dict hit, ~1,350 instructions less per NULL bound: the writer binds one to three
    # per event (scripts/writer_instructions.py). The value bound stays None: nothing else changes.
    sqlite3.register_adapter(type(None), _NONE.get)
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
        # lower() of all of Unicode, as MySQL's and PostgreSQL's (SQLite's own folds ASCII only)
        dbapi_connection.create_function("lower", 1, _lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


_NONE: dict[Any, None] = {}  # its ``get`` answers None for None


def _lower(value: Any) -> Any:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).lower()


def insert_ignoring_duplicates(table: sa.Table, dialect_name: str) -> sa.Insert:
    """An INSERT that skips rows whose unique keys already exist; ``rowcount`` counts the rows written.

    On MySQL this is ``INSERT IGNORE``, which turns *every* error into a warning (a value too long is cut,
    one out of range clamped): run it through ``schema.statements``, which refuses a statement that warned
    of anything but duplicates.
    """
    if dialect_name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect_name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return mysql.insert(table).prefix_with("IGNORE")


def upsert(
    table: sa.Table, dialect_name: str, row: dict[str, Any], key: Sequence[str], update: Sequence[str]
) -> sa.Insert:
    """Insert ``row``, or where its unique ``key`` exists set the ``update`` columns to ``row``'s values
    (only a conflict on that key is resolved; anything else is an error)."""
    if dialect_name == "sqlite":
        lite = sqlite.insert(table).values(row)
        return lite.on_conflict_do_update(index_elements=list(key), set_={c: lite.excluded[c] for c in update})
    if dialect_name == "postgresql":
        pg = postgresql.insert(table).values(row)
        return pg.on_conflict_do_update(index_elements=list(key), set_={c: pg.excluded[c] for c in update})
    statement = mysql.insert(table).values(row)
    return statement.on_duplicate_key_update({c: statement.inserted[c] for c in update})
